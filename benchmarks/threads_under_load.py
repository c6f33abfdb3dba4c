"""torch's thread count on a shared machine: a widget's new setting and a whole notebook, with two busy processes
beside them, before (2 threads: torch's default on this 2-core machine) and after (course's rule: usable CPUs less
one, here 1) the change in course.device.

Each case runs in a fresh process (the notebook in a fresh kernel) whose COURSE_NUM_THREADS is 2 (before) or
unset (after); the two busy processes are pure-Python loops, started before and stopped after each case.
`uptime`'s load average is recorded beside each row: the machine may be loaded by others as well.

    python threads_under_load.py [--settings 3] [--notebook ../notebooks/02_forward_reverse.ipynb] [--busy 2]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import print_table, save

ROOT = Path(__file__).resolve().parent.parent

WIDGET = """
import json, sys, time
import torch
from course import device, models, widgets
unet, classifier = models.load_digits_unet(), models.load_classifier()
explorer = widgets.GuidanceExplorer(unet, n=8, steps=10, classifier=classifier)
call = []
x, t = torch.randn(16, 1, 16, 16), torch.full((16,), 500)
with torch.no_grad():
    for _ in range(5):
        start = time.perf_counter(); unet(x, t, class_labels=torch.zeros(16, dtype=torch.long)); \
call.append(time.perf_counter() - start)
for i in range(int(sys.argv[1])):
    explorer.w.value = 0.5 * (i + 1)
print(json.dumps({"threads": torch.get_num_threads(), "settings_s": explorer.latencies[1:],
                  "model_call_ms": 1000 * sorted(call)[2], "choice": device.thread_report()}))
"""

NOTEBOOK = """
import json, sys, time
import nbformat
from nbclient import NotebookClient
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
start = time.perf_counter()
NotebookClient(nb, timeout=900, kernel_name="python3", allow_errors=True,
               resources={"metadata": {"path": str(__import__("pathlib").Path(path).parent)}}).execute()
errors = sum(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
print(json.dumps({"seconds": time.perf_counter() - start, "error_outputs": errors}))
"""


def busy(n):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(procs):
    for proc in procs:
        proc.kill()
        proc.wait()


def run_case(code, args, threads, timeout):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                            "COURSE_NUM_THREADS")}
    if threads:
        env["COURSE_NUM_THREADS"] = str(threads)
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                            timeout=timeout, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", type=int, default=3, help="new guidance settings per case")
    parser.add_argument("--notebook", default=str(ROOT / "notebooks" / "02_forward_reverse.ipynb"),
                        help="a notebook to time in each case, or none")
    parser.add_argument("--busy", type=int, default=2, help="busy processes beside each case")
    parser.add_argument("--name", default="threads_under_load")
    args = parser.parse_args()
    rows = []
    for label, threads in (("before: 2 threads", 2), ("after: course's rule", None)):
        procs = busy(args.busy)
        try:
            time.sleep(1)  # let the busy loops take their cores
            load = os.getloadavg()[0]
            widget = run_case(WIDGET, [str(args.settings)], threads, timeout=1800)
            print(label, widget, flush=True)
            notebook = {"seconds": None, "error_outputs": "-"}
            if args.notebook != "none":
                notebook = run_case(NOTEBOOK, [str(Path(args.notebook).resolve())], threads, timeout=1800)
                print(label, notebook, flush=True)
        finally:
            stop(procs)
        settings = widget["settings_s"]
        rows.append({"case": label, "torch_threads": widget["threads"], "busy": args.busy,
                     "load_1min": round(load, 2), "model_call_ms": round(widget["model_call_ms"], 1),
                     "setting_min_s": round(min(settings), 2), "setting_max_s": round(max(settings), 2),
                     "notebook": Path(args.notebook).name, "notebook_s": None if notebook["seconds"] is None else round(notebook["seconds"], 1),
                     "notebook_errors": notebook["error_outputs"], "choice": widget["choice"]})
        print(rows[-1], flush=True)
    print_table([{k: v for k, v in r.items() if k != "choice"} for r in rows],
                f"Guidance widget (n = 8, 10 DDIM steps) and a notebook beside {args.busy} busy processes")
    save(args.name, rows)


if __name__ == "__main__":
    main()
