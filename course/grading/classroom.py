"""Grading a whole class: gradebook.csv, per-student reports and feedback, and Gradescope's results.json.

``grade_all(DIR)`` grades every student folder under DIR (``DIR/<student>/*.ipynb``), one notebook per worker
process, as many workers as the machine has cores. ``gradescope()`` is what Gradescope's ``run_autograder``
calls: it grades ``/autograder/submission`` and writes ``/autograder/results/results.json``.
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat

from . import NOTEBOOKS, _meta, check_cells, grade

REPORT_NAME, FEEDBACK_NAME, GRADEBOOK_NAME = "grade-report.json", "feedback.md", "gradebook.csv"


def graded_notebooks(instructor_dir: Path) -> dict[str, list[tuple[str, float]]]:
    """{notebook file name: [(check grade_id, points), ...]} for the instructor notebooks that have checks."""
    out = {}
    for path in sorted(Path(instructor_dir).glob("*.ipynb")):
        checks = [(_meta(c)["grade_id"], float(_meta(c).get("points", 1)))
                  for c in check_cells(nbformat.read(path, as_version=4))]
        if checks:
            out[path.name] = checks
    return out


def _student_notebooks(folder: Path, names) -> dict[str, Path]:
    found = {}
    for path in sorted(folder.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts or path.name not in names:
            continue
        found.setdefault(path.name, path)  # the shallowest copy of each notebook
    return found


def _grade_one(job):
    student, notebook, path, instructor, timeout, memory = job
    try:
        return student, notebook, grade(path, instructor, timeout=timeout, memory_limit_gb=memory, write=False, jobs=1)
    except Exception as err:  # noqa: BLE001 - one broken notebook must not stop a class's grading
        return student, notebook, {"error": f"{type(err).__name__}: {err}"}


def _missing(notebook: str, checks, why: str) -> dict:
    return {"notebook": notebook, "points": 0.0, "max_points": sum(p for _, p in checks), "review_flags": [],
            "exercises": [{"grade_id": g, "points": 0.0, "max_points": p, "status": "not run", "message": why,
                           "output": ""} for g, p in checks]}


def grade_all(directory: Path, out: Path | None = None, instructor_dir: Path = NOTEBOOKS, jobs: int | None = None,
              timeout: int = 120, memory_limit_gb: float | None = None, notebooks=None, quiet: bool = False) -> dict:
    """Grade every student folder under directory; write the gradebook, reports and feedback. Returns a summary."""
    directory, out = Path(directory), Path(out) if out else Path(directory)
    assignment = graded_notebooks(instructor_dir)
    if notebooks:
        assignment = {name: assignment[name] for name in notebooks}
    students = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    present = {s.name: _student_notebooks(s, assignment) for s in students}
    if not notebooks:  # grade the notebooks someone handed in
        handed_in = set().union(*present.values()) if present else set()
        assignment = {name: checks for name, checks in assignment.items() if name in handed_in}
    jobs = jobs or os.cpu_count() or 1
    if jobs > 1:  # every kernel gets one core's worth of threads
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
    work = [(s, nb, path, Path(instructor_dir) / nb, timeout, memory_limit_gb)
            for s, found in present.items() for nb, path in found.items()]
    start = time.monotonic()
    results: dict[str, dict[str, dict]] = {s.name: {} for s in students}
    if jobs == 1 or len(work) <= 1:
        done = map(_grade_one, work)
    else:
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(work)), mp_context=multiprocessing.get_context("spawn"))
        done = pool.map(_grade_one, work)
    for student, notebook, report in done:
        results[student][notebook] = report
        if not quiet:
            total = f"{report['points']:g} / {report['max_points']:g}" if "points" in report else report["error"]
            print(f"{student:<24} {notebook:<32} {total}", flush=True)
    if jobs > 1 and len(work) > 1:
        pool.shutdown()
    seconds = time.monotonic() - start
    rows = []
    for s in students:
        reports = []
        for notebook, checks in assignment.items():
            report = results[s.name].get(notebook)
            if report is None:
                report = _missing(notebook, checks, "not handed in")
            elif "error" in report:
                report = _missing(notebook, checks, f"could not be graded: {report['error']}")
            report["notebook_name"] = notebook
            reports.append(report)
        student_report = {"student": s.name, "points": sum(r["points"] for r in reports),
                          "max_points": sum(r["max_points"] for r in reports), "notebooks": reports}
        target = out / s.name
        target.mkdir(parents=True, exist_ok=True)
        (target / REPORT_NAME).write_text(json.dumps(student_report, indent=2))
        (target / FEEDBACK_NAME).write_text(feedback(student_report))
        rows.append(student_report)
    columns = _columns(assignment)
    gradebook = out / GRADEBOOK_NAME
    with gradebook.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["student"] + [name for name, _, _ in columns] + ["total", "max_points"])
        for row in rows:
            points = {(r["notebook_name"], e["grade_id"]): e["points"] for r in row["notebooks"] for e in r["exercises"]}
            writer.writerow([row["student"]] + [f"{points.get((nb, g), 0.0):g}" for _, nb, g in columns]
                            + [f"{row['points']:g}", f"{row['max_points']:g}"])
    return {"students": len(students), "notebooks": len(work), "jobs": jobs, "seconds": round(seconds, 1),
            "gradebook": str(gradebook), "rows": rows}


def _columns(assignment) -> list[tuple[str, str, str]]:
    """(column name, notebook, grade_id): the grade_id, prefixed by the notebook only where two notebooks share one."""
    ids = [g for checks in assignment.values() for g, _ in checks]
    return [(g if ids.count(g) == 1 else f"{Path(nb).stem}:{g}", nb, g)
            for nb, checks in assignment.items() for g, _ in checks]


def feedback(student_report: dict) -> str:
    """What a student reads: each exercise's points, what passed, and each failure's message."""
    lines = [f"# Feedback for {student_report['student']}", "",
             f"**Total: {student_report['points']:g} / {student_report['max_points']:g}**", ""]
    for report in student_report["notebooks"]:
        lines += [f"## {report['notebook_name']}: {report['points']:g} / {report['max_points']:g}", ""]
        for ex in report["exercises"]:
            mark = "✔" if ex["status"] == "passed" else "✘"
            lines.append(f"- {mark} `{ex['grade_id']}`: {ex['points']:g} / {ex['max_points']:g} ({ex['status']})")
            text = ex["message"] if ex["status"] != "passed" else ex.get("output", "")
            if text:
                lines += ["", "  ```", *[f"  {line}" for line in text.strip().splitlines()[-20:]], "  ```", ""]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- Gradescope

def gradescope_results(reports: list[dict]) -> dict:
    """Gradescope's results.json: a test per check, with name, score, max_score, output and visibility."""
    tests = []
    for report in reports:
        for ex in report["exercises"]:
            output = ex["output"] if ex["status"] == "passed" else (ex["message"] or ex["status"])
            tests.append({"name": f"{report['notebook_name']}: {ex['grade_id']}", "score": ex["points"],
                          "max_score": ex["max_points"], "status": "passed" if ex["status"] == "passed" else "failed",
                          "output": output, "visibility": "visible"})
    total = sum(t["score"] for t in tests)
    return {"score": total, "output": f"{total:g} / {sum(t['max_score'] for t in tests):g} points",
            "visibility": "visible", "stdout_visibility": "hidden", "tests": tests}


def gradescope(submission: Path = Path("/autograder/submission"),
               results: Path = Path("/autograder/results/results.json"), instructor_dir: Path = NOTEBOOKS,
               timeout: int = 120, memory_limit_gb: float | None = None, notebooks=None) -> dict:
    """Grade one Gradescope submission (every graded notebook in it, or the ones named) and write results.json."""
    start = time.monotonic()
    assignment = graded_notebooks(instructor_dir)
    found = _student_notebooks(Path(submission), assignment)
    names = list(notebooks) if notebooks else list(found) or list(assignment)
    reports = []
    for name in names:
        if name in found:
            report = grade(found[name], Path(instructor_dir) / name, timeout=timeout,
                           memory_limit_gb=memory_limit_gb, write=False)
        else:
            report = _missing(name, assignment[name], f"{name} was not found in the submission")
        report["notebook_name"] = name
        reports.append(report)
    out = gradescope_results(reports)
    out["execution_time"] = round(time.monotonic() - start, 1)
    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(out, indent=2))
    return out


# --------------------------------------------------------------------------- command line

def add_commands(sub) -> None:
    ga = sub.add_parser("grade-all", help="grade every student folder under DIR; write gradebook.csv and feedback")
    ga.add_argument("directory", type=Path)
    ga.add_argument("--out", type=Path, help="where reports and gradebook.csv go (default: DIR)")
    ga.add_argument("--instructor-dir", type=Path, default=NOTEBOOKS)
    ga.add_argument("--jobs", type=int, default=None, help="parallel notebooks (default: the number of cores)")
    ga.add_argument("--timeout", type=int, default=120, help="seconds allowed per cell")
    ga.add_argument("--memory-limit", type=float, default=None, help="address-space limit per kernel, GiB")
    ga.add_argument("--notebooks", nargs="*", help="the assignment's notebooks (default: all that were handed in)")
    gs = sub.add_parser("gradescope", help="Gradescope autograder: grade a submission, write results.json")
    gs.add_argument("--submission", type=Path, default=Path(os.environ.get("GRADESCOPE_SUBMISSION",
                                                                           "/autograder/submission")))
    gs.add_argument("--results", type=Path, default=Path(os.environ.get("GRADESCOPE_RESULTS",
                                                                        "/autograder/results/results.json")))
    gs.add_argument("--instructor-dir", type=Path, default=NOTEBOOKS)
    gs.add_argument("--timeout", type=int, default=120)
    gs.add_argument("--memory-limit", type=float, default=None)
    gs.add_argument("--notebooks", nargs="*")


def run_command(args) -> int:
    if args.command == "grade-all":
        if not args.directory.is_dir():
            print(f"error: no folder {args.directory}", file=sys.stderr)
            return 2
        summary = grade_all(args.directory, args.out, args.instructor_dir, args.jobs, args.timeout,
                            args.memory_limit, args.notebooks)
        print(f"graded {summary['notebooks']} notebooks of {summary['students']} students in "
              f"{summary['seconds']} s on {summary['jobs']} workers; gradebook: {summary['gradebook']}")
        return 0
    out = gradescope(args.submission, args.results, args.instructor_dir, args.timeout, args.memory_limit,
                     args.notebooks)
    print(f"{out['output']}; results: {args.results}")
    return 0
