"""Grading a class: `grade-all` on N solved copies of notebook 02 against one single `grade` run.

Each check runs in a fresh kernel, so one copy of notebook 02 costs two kernels. grade-all runs one notebook per
worker, as many workers as cores; ideally N copies take N / cores single runs. The figures go to
benchmarks/results/grade_all.json. Run it on an idle machine: `python grade_all_speed.py [--copies 30]`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nbformat  # noqa: E402

from common import print_table, save  # noqa: E402
from course import grading  # noqa: E402
from course.grading import classroom  # noqa: E402

NAME = "02_forward_reverse.ipynb"


def solved_copy():
    instructor = nbformat.read(grading.NOTEBOOKS / NAME, as_version=4)
    student = grading.release_notebook(instructor)
    solutions = {grading._meta(c)["grade_id"]: c.source for c in instructor.cells if grading.is_solution_cell(c)}
    for cell in student.cells:
        if grading.is_solution_cell(cell):
            cell.source = solutions[grading._meta(cell)["grade_id"]]
    return student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    args = parser.parse_args()
    student = solved_copy()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        single = tmp / "single" / NAME
        single.parent.mkdir()
        nbformat.write(student, single)
        start = time.monotonic()
        report = grading.grade(single, write=False, jobs=1)
        single_s = time.monotonic() - start
        assert report["points"] == report["max_points"], report
        submissions = tmp / "submissions"
        for i in range(args.copies):
            (submissions / f"student{i:02d}").mkdir(parents=True)
            nbformat.write(student, submissions / f"student{i:02d}" / NAME)
        start = time.monotonic()
        summary = classroom.grade_all(submissions, jobs=args.jobs, quiet=True)
        class_s = time.monotonic() - start
        full = sum(r["points"] == r["max_points"] for r in summary["rows"])
    ideal = single_s * args.copies / args.jobs
    rows = [{"run": "one copy, grade (jobs=1)", "copies": 1, "workers": 1, "seconds": round(single_s, 1),
             "per_copy_s": round(single_s, 1), "full_marks": int(report["points"] == report["max_points"])},
            {"run": "grade-all", "copies": args.copies, "workers": args.jobs, "seconds": round(class_s, 1),
             "per_copy_s": round(class_s / args.copies, 2), "full_marks": full},
            {"run": f"ideal: copies x single / {args.jobs} cores", "copies": args.copies, "workers": args.jobs,
             "seconds": round(ideal, 1), "per_copy_s": round(ideal / args.copies, 2), "full_marks": args.copies}]
    print_table(rows, f"grade-all on {args.copies} solved copies of {NAME} ({os.cpu_count()} cores; "
                      f"grade-all / ideal = {class_s / ideal:.2f})")
    save("grade_all", rows)


if __name__ == "__main__":
    main()
