"""The command line of the grading pipeline: ``python -m course.grading release|grade|grade-all|gradescope``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import NOTEBOOKS, RELEASE, classroom, format_report, grade, release


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course.grading", description="Release student notebooks and grade submissions.")
    sub = parser.add_subparsers(dest="command", required=True)
    rel = sub.add_parser("release", help="write student notebooks (solutions and hidden tests removed) to release/")
    rel.add_argument("--source", type=Path, default=NOTEBOOKS)
    rel.add_argument("--target", type=Path, default=RELEASE)
    gr = sub.add_parser("grade", help="grade student notebooks and print points per exercise")
    gr.add_argument("notebooks", type=Path, nargs="+")
    gr.add_argument("--instructor", type=Path, help="instructor notebook (default: notebooks/<same name>)")
    gr.add_argument("--timeout", type=int, default=120, help="seconds allowed per cell")
    gr.add_argument("--memory-limit", type=float, default=None, help="address-space limit per kernel, GiB")
    gr.add_argument("--report", type=Path, help="JSON report path (default: beside the notebook)")
    gr.add_argument("--jobs", type=int, default=None, help="checks run at once (default: the number of cores)")
    classroom.add_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "release":
        for path in release(args.source, args.target):
            print(f"released {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
        return 0
    if args.command != "grade":
        return classroom.run_command(args)
    for path in args.notebooks:
        try:
            report = grade(path, args.instructor, args.timeout, args.report if len(args.notebooks) == 1 else None,
                           args.memory_limit, jobs=args.jobs)
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"\n{path}\n{format_report(report)}\nreport: {report['report_path']}")
    return 0

