"""The graded-exercise pipeline: release student notebooks and grade submissions.

Instructor notebooks mark exercises the way nbgrader does:

* a *solution cell* has ``metadata.nbgrader.solution = true`` and its answer between
  ``### BEGIN SOLUTION`` and ``### END SOLUTION``;
* a *check cell* has ``metadata.nbgrader.grade = true``, a ``grade_id`` and ``points``;
  it calls a checker from :mod:`course.exercises`.

``python -m course.grading release`` writes the student copies to ``release/``;
``python -m course.grading grade NB`` grades one student notebook.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
RELEASE = ROOT / "release"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
PLACEHOLDER = "# YOUR CODE HERE\nraise NotImplementedError()"


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def is_solution_cell(cell) -> bool:
    return bool(_meta(cell).get("solution"))


def is_check_cell(cell) -> bool:
    return bool(_meta(cell).get("grade")) and cell.cell_type == "code"


def check_cells(nb) -> list:
    return [cell for cell in nb.cells if is_check_cell(cell)]


# --------------------------------------------------------------------------- release

def has_solution_block(source: str) -> bool:
    return any(line.strip() == BEGIN for line in source.splitlines())


def strip_solution(source: str) -> str:
    """Replace each BEGIN/END SOLUTION block with the placeholder, at the block's indentation."""
    lines, out, inside = source.splitlines(), [], False
    for line in lines:
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"nested '{BEGIN}' in:\n{source}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + p for p in PLACEHOLDER.splitlines()]
        elif stripped == END:
            if not inside:
                raise ValueError(f"'{END}' without '{BEGIN}' in:\n{source}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"'{BEGIN}' without '{END}' in:\n{source}")
    return "\n".join(out)


def clear_outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    return nb


def release_notebook(nb):
    """The student copy of an instructor notebook: solutions replaced, outputs cleared."""
    nb = clear_outputs(copy.deepcopy(nb))
    for cell in nb.cells:
        if has_solution_block(cell.source):
            if not is_solution_cell(cell):
                raise ValueError(f"a cell holds '{BEGIN}' but is not marked as a solution cell:\n{cell.source}")
            cell.source = strip_solution(cell.source)
    return nb


def release(source_dir: Path = NOTEBOOKS, target_dir: Path = RELEASE) -> list[Path]:
    """Write the student copy of every notebook in source_dir to target_dir."""
    target_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(source_dir.glob("*.ipynb")):
        nb = release_notebook(nbformat.read(path, as_version=4))
        out = target_dir / path.name
        nbformat.write(nb, out)
        written.append(out)
    return written


# --------------------------------------------------------------------------- grade

@dataclass
class ExerciseScore:
    grade_id: str
    points: float
    max_points: float
    status: str  # "passed", "failed", "timeout", "not run"
    message: str = ""


def restore_checks(student, instructor):
    """Put the instructor's check cells into the student's notebook, so an edited check does not help.

    A check cell is matched by its grade_id; one the student deleted is put back after the
    solution cell of the same exercise, or at the end.
    """
    nb = copy.deepcopy(student)
    by_id = {_meta(c).get("grade_id"): c for c in nb.cells if is_check_cell(c)}
    for check in check_cells(instructor):
        grade_id = _meta(check)["grade_id"]
        if grade_id in by_id:
            by_id[grade_id].source = check.source
            by_id[grade_id].metadata = copy.deepcopy(check.metadata)
            continue
        exercise = _meta(check).get("exercise")
        position = len(nb.cells)
        for i, cell in enumerate(nb.cells):
            if is_solution_cell(cell) and _meta(cell).get("grade_id") == exercise:
                position = i + 1
        nb.cells.insert(position, copy.deepcopy(check))
    # Check cells the instructor does not have (forged by a student) score nothing: drop their marks.
    instructor_ids = {_meta(c)["grade_id"] for c in check_cells(instructor)}
    for cell in nb.cells:
        if is_check_cell(cell) and _meta(cell).get("grade_id") not in instructor_ids:
            cell.metadata["nbgrader"]["grade"] = False
    return nb


def _error_of(cell) -> tuple[str, str] | None:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(output.get("traceback", [])[-6:]))
            return output.get("ename", "Error"), text.strip() or output.get("evalue", "")
    return None


def execute(nb, cwd: Path, timeout: int):
    """Run every cell in a fresh kernel; errors and time-outs are recorded, never fatal."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    client = NotebookClient(nb, timeout=timeout, allow_errors=True, interrupt_on_timeout=True,
                            kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    except DeadKernelError as err:
        print(f"the kernel died while grading ({err}); the checks that did not run score zero", file=sys.stderr)
    return nb


def score(nb) -> list[ExerciseScore]:
    scores = []
    for cell in check_cells(nb):
        meta = _meta(cell)
        max_points = float(meta.get("points", 1))
        ran = cell.get("execution_count") is not None or cell.get("outputs")
        error = _error_of(cell)
        if not ran:
            scores.append(ExerciseScore(meta["grade_id"], 0.0, max_points, "not run"))
        elif error is None:
            scores.append(ExerciseScore(meta["grade_id"], max_points, max_points, "passed"))
        else:
            status = "timeout" if error[0] in ("KeyboardInterrupt", "CellTimeoutError") else "failed"
            scores.append(ExerciseScore(meta["grade_id"], 0.0, max_points, status, error[1][-500:]))
    return scores


def grade(student_path: Path, instructor_path: Path | None = None, timeout: int = 120,
          report_path: Path | None = None) -> dict:
    """Grade one student notebook: restore checks, execute, score. Returns the report dict."""
    student_path = Path(student_path)
    instructor_path = Path(instructor_path) if instructor_path else NOTEBOOKS / student_path.name
    if not student_path.exists():
        raise FileNotFoundError(f"no student notebook at {student_path}")
    if not instructor_path.exists():
        raise FileNotFoundError(f"no instructor notebook at {instructor_path}; pass --instructor")
    student = nbformat.read(student_path, as_version=4)
    instructor = nbformat.read(instructor_path, as_version=4)
    nb = execute(restore_checks(clear_outputs(student), instructor), cwd=instructor_path.parent, timeout=timeout)
    scores = score(nb)
    report = {"notebook": str(student_path), "instructor": str(instructor_path),
              "points": sum(s.points for s in scores), "max_points": sum(s.max_points for s in scores),
              "exercises": [asdict(s) for s in scores]}
    report_path = Path(report_path) if report_path else student_path.with_suffix(".grade.json")
    report_path.write_text(json.dumps(report, indent=2))
    report["report_path"] = str(report_path)
    return report


def format_report(report: dict) -> str:
    rows = [f"{'exercise':<28}{'points':>10}  status", "-" * 50]
    for ex in report["exercises"]:
        rows.append(f"{ex['grade_id']:<28}{ex['points']:>5g} / {ex['max_points']:<3g} {ex['status']}")
    rows += ["-" * 50, f"{'total':<28}{report['points']:>5g} / {report['max_points']:<3g}"]
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course.grading", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rel = sub.add_parser("release", help="write student notebooks (solutions removed) to release/")
    rel.add_argument("--source", type=Path, default=NOTEBOOKS)
    rel.add_argument("--target", type=Path, default=RELEASE)
    gr = sub.add_parser("grade", help="grade student notebooks and print points per exercise")
    gr.add_argument("notebooks", type=Path, nargs="+")
    gr.add_argument("--instructor", type=Path, help="instructor notebook (default: notebooks/<same name>)")
    gr.add_argument("--timeout", type=int, default=120, help="seconds allowed per cell")
    gr.add_argument("--report", type=Path, help="JSON report path (default: beside the notebook)")
    args = parser.parse_args(argv)
    if args.command == "release":
        for path in release(args.source, args.target):
            print(f"released {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
        return 0
    for path in args.notebooks:
        try:
            report = grade(path, args.instructor, args.timeout, args.report if len(args.notebooks) == 1 else None)
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"\n{path}\n{format_report(report)}\nreport: {report['report_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
