"""Wall time of each notebook, executed top to bottom on this machine (the same way nbval runs it)."""
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from common import print_table, save

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def main(names=None):
    rows = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        if names and not any(n in path.name for n in names):
            continue
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
        errors = sum(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        rows.append({"notebook": path.name, "seconds": round(time.perf_counter() - start, 1),
                     "cells_with_errors": errors})
        print(rows[-1], flush=True)
    print_table(rows, "Notebook wall time (target: about 90 s each)")
    save("notebook_times", rows)


if __name__ == "__main__":
    main(sys.argv[1:])
