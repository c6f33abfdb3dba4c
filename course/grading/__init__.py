"""The graded-exercise pipeline: release student notebooks and grade submissions.

Instructor notebooks mark exercises the way nbgrader does (its cell-metadata schema version 3, nothing more):

* a *solution cell* has ``metadata.nbgrader.solution = true``, a ``grade_id`` (the exercise's name) and its
  answer between ``### BEGIN SOLUTION`` and ``### END SOLUTION``;
* a *check cell* has ``metadata.nbgrader.grade = true``, ``grade_id = "check_" + exercise`` and ``points``;
  it calls a checker from :mod:`course.exercises`, and may hold tests between ``### BEGIN HIDDEN TESTS`` and
  ``### END HIDDEN TESTS`` that the student copy does not show.

``python -m course.grading release`` writes the student copies to ``release/``;
``python -m course.grading grade NB`` grades one student notebook;
``python -m course.grading grade-all DIR`` grades a class (one sub-folder per student);
``python -m course.grading gradescope`` is the Gradescope autograder's entry point.

Each check runs in a fresh kernel that first fingerprints the grading machinery (:mod:`course.grading.guard`),
then runs the student's cells before the check, then the instructor's check. See the README's threat model.
"""
from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import guard


class _LazyNbformat:
    """nbformat, imported on first use: the grading guard imports this package inside every kernel, and
    nbformat's validator takes seconds to import."""

    def __getattr__(self, name):
        import nbformat as module

        return getattr(module, name)


nbformat = _LazyNbformat()

ROOT = Path(__file__).resolve().parent.parent.parent
NOTEBOOKS = ROOT / "notebooks"
RELEASE = ROOT / "release"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
PLACEHOLDER = "# YOUR CODE HERE\nraise NotImplementedError()"
CHECK_PREFIX = "check_"
BOOTSTRAP_TIMEOUT = 600  # seconds for the guard's imports, whatever the per-cell limit
HARD_TIMEOUT_GRACE = 15  # seconds after the interrupt before a cell that ignores it has its kernel killed


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def is_solution_cell(cell) -> bool:
    return bool(_meta(cell).get("solution"))


def is_check_cell(cell) -> bool:
    return bool(_meta(cell).get("grade")) and cell.cell_type == "code"


def check_cells(nb) -> list:
    return [cell for cell in nb.cells if is_check_cell(cell)]


def exercise_of(check) -> str:
    """The solution cell a check cell grades: its grade_id without 'check_' (nbgrader allows no extra key)."""
    grade_id = _meta(check)["grade_id"]
    return grade_id[len(CHECK_PREFIX):] if grade_id.startswith(CHECK_PREFIX) else grade_id


# --------------------------------------------------------------------------- release

def has_solution_block(source: str) -> bool:
    return any(line.strip() == BEGIN for line in source.splitlines())


def has_hidden_tests(source: str) -> bool:
    return any(line.strip() == HIDDEN_BEGIN for line in source.splitlines())


def _strip_block(source: str, begin: str, end: str, placeholder: str | None) -> str:
    lines, out, inside = source.splitlines(), [], False
    for line in lines:
        stripped = line.strip()
        if stripped == begin:
            if inside:
                raise ValueError(f"nested '{begin}' in:\n{source}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            if placeholder is not None:
                out += [indent + p for p in placeholder.splitlines()]
        elif stripped == end:
            if not inside:
                raise ValueError(f"'{end}' without '{begin}' in:\n{source}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"'{begin}' without '{end}' in:\n{source}")
    return "\n".join(out)


def strip_solution(source: str) -> str:
    """Replace each BEGIN/END SOLUTION block with the placeholder, at the block's indentation."""
    return _strip_block(source, BEGIN, END, PLACEHOLDER)


def strip_hidden_tests(source: str) -> str:
    """Remove each BEGIN/END HIDDEN TESTS block, markers included (what nbgrader's ClearHiddenTests does)."""
    return _strip_block(source, HIDDEN_BEGIN, HIDDEN_END, None).rstrip("\n")


def clear_outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    return nb


def release_notebook(nb):
    """The student copy of an instructor notebook: solutions and hidden tests removed, outputs cleared."""
    nb = clear_outputs(copy.deepcopy(nb))
    for cell in nb.cells:
        if has_solution_block(cell.source):
            if not is_solution_cell(cell):
                raise ValueError(f"a cell holds '{BEGIN}' but is not marked as a solution cell:\n{cell.source}")
            cell.source = strip_solution(cell.source)
        if has_hidden_tests(cell.source):
            if not is_check_cell(cell):
                raise ValueError(f"a cell holds '{HIDDEN_BEGIN}' but is not a check cell:\n{cell.source}")
            cell.source = strip_hidden_tests(cell.source)
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


# --------------------------------------------------------------------------- the grading plan

@dataclass
class ExerciseScore:
    grade_id: str
    points: float
    max_points: float
    status: str  # "passed", "failed", "timeout", "kernel died", "reference used", "tampered", "not run"
    message: str = ""
    output: str = ""


@dataclass
class _Cell:
    source: str
    index: int  # the cell's index in the student's notebook (-1: an instructor check put back)
    solution_of: str | None = None


@dataclass
class _Check:
    grade_id: str
    points: float
    source: str
    exercise: str
    position: int = -1  # where it runs: after the student cells with a smaller position
    cells_before: list = field(default_factory=list)


def grading_plan(student, instructor) -> tuple[list[_Cell], list[_Check]]:
    """The student's code cells, and the instructor's checks with the place each runs at.

    Every student cell that claims an instructor check's grade_id (the check itself, or copies of it) is
    dropped: the instructor's check runs once, at the first such place if that comes after the exercise's
    solution cell, else right after the solution cell (else at the end). Student cells with grade_ids the
    instructor does not have run as ordinary code and score nothing. Points are always the instructor's.
    """
    checks = []
    for cell in check_cells(instructor):
        meta = _meta(cell)
        checks.append(_Check(meta["grade_id"], float(meta.get("points", 1)), cell.source, exercise_of(cell)))
    ids = [c.grade_id for c in checks]
    if len(set(ids)) != len(ids):
        raise ValueError(f"the instructor notebook repeats a check grade_id: {ids}")
    by_id = {c.grade_id: c for c in checks}
    cells, claimed, solution_at = [], {}, {}
    for i, cell in enumerate(student.cells):
        if cell.cell_type != "code":
            continue
        grade_id = _meta(cell).get("grade_id")
        if is_check_cell(cell) and grade_id in by_id:
            claimed.setdefault(grade_id, len(cells))
            continue
        solution_of = grade_id if is_solution_cell(cell) else None
        if solution_of:
            solution_at[solution_of] = len(cells)
        cells.append(_Cell(cell.source, i, solution_of))
    for check in checks:
        after_solution = solution_at.get(check.exercise, -1) + 1 if check.exercise in solution_at else len(cells)
        place = claimed.get(check.grade_id, -1)
        check.position = place if place >= after_solution else after_solution
    return cells, checks


# --------------------------------------------------------------------------- running one check

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _text_outputs(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif output.get("output_type") == "error":
            parts.append("\n".join(output.get("traceback", [])) or f"{output.get('ename')}: {output.get('evalue')}")
    return _ANSI.sub("", "".join(parts)).strip()


def _error_message(cell, reply) -> str:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            text = _ANSI.sub("", "\n".join(output.get("traceback", [])[-8:])).strip()
            return text or f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
    content = (reply or {}).get("content", {})
    return f"{content.get('ename', 'Error')}: {content.get('evalue', '')}".strip()


def _signed_pass(cell, nonce: str, grade_id: str) -> bool:
    for output in cell.get("outputs", []):
        record = output.get("data", {}).get(guard.RESULT_MIME) if output.get("output_type") == "display_data" else None
        if isinstance(record, dict) and record.get("nonce") == nonce and record.get("grade_id") == grade_id:
            return record.get("passed") is True
    return False


class GraderBroken(RuntimeError):
    """The grading environment itself failed (the guard did not install): no student is to blame."""


async def _run_kernel(sources: list[str], cwd: Path, timeout: int, memory_limit_bytes: int | None,
                      checkers: bool = True) -> dict:
    """Run the bootstrap, then sources, in one fresh kernel; stop at a death or a hang.

    Returns {"cells": executed cells, "replies": {index: execute_reply}, "elapsed": {index: s},
    "died_at": index or None, "hung_at": index or None}; index 0 is the bootstrap.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(guard.bootstrap_source(memory_limit_bytes, checkers))]
                      + [new_code_cell(s) for s in sources])
    nb.cells[0].metadata["grader_bootstrap"] = True
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    replies, elapsed = {}, {}

    def on_executed(cell, cell_index, execute_reply):
        replies[cell_index] = execute_reply

    client = NotebookClient(nb, timeout=timeout, allow_errors=True, interrupt_on_timeout=True,
                            kernel_name="python3", shutdown_kernel="immediate", on_cell_executed=on_executed,
                            timeout_func=lambda cell: BOOTSTRAP_TIMEOUT if cell.metadata.get("grader_bootstrap")
                            else timeout,
                            resources={"metadata": {"path": str(cwd)}})
    result = {"cells": nb.cells, "replies": replies, "elapsed": elapsed, "died_at": None, "hung_at": None}
    try:
        async with client.async_setup_kernel():
            for i, cell in enumerate(nb.cells):
                start = time.monotonic()
                try:
                    limit = BOOTSTRAP_TIMEOUT if i == 0 else timeout
                    await asyncio.wait_for(client.async_execute_cell(cell, i), limit + HARD_TIMEOUT_GRACE)
                except DeadKernelError:
                    result["died_at"] = i
                    break
                except asyncio.TimeoutError:
                    result["hung_at"] = i
                    break
                finally:
                    elapsed[i] = time.monotonic() - start
                if i not in replies and cell.source.strip():  # no reply and no exception: the kernel went away
                    result["died_at"] = i
                    break
    except DeadKernelError:
        if result["died_at"] is None:
            result["died_at"] = len(replies)
    except Exception as err:  # noqa: BLE001 - a kernel that dies while shutting down is not the student's score
        if result["died_at"] is None and result["hung_at"] is None:
            raise
        del err
    return result


async def _grade_check(check: _Check, cells: list[_Cell], skip: dict, cwd: Path, timeout: int,
                       memory_limit_bytes: int | None, slots: asyncio.Semaphore) -> ExerciseScore:
    """Run one check in fresh kernels until it has a verdict; cells that kill or hang a kernel are skipped."""
    def zero(status, message, output=""):
        return ExerciseScore(check.grade_id, 0.0, check.points, status, message, output)

    uses_checkers = "course" in check.source
    while True:
        kept = [k for k in range(check.position) if k not in skip]
        prefix = [cells[k] for k in kept]
        nonce = secrets.token_hex(16)
        sources = [c.source for c in prefix] + [guard.check_source(nonce, check.grade_id, check.source)]
        async with slots:
            run = await _run_kernel(sources, cwd, timeout, memory_limit_bytes, uses_checkers)
        replies, last = run["replies"], len(sources)
        if run["died_at"] == 0 or (0 in replies and replies[0]["content"]["status"] != "ok"):
            raise GraderBroken(f"the grading guard did not start in the kernel: "
                               f"{_error_message(run['cells'][0], replies.get(0))}")
        for index, secs in run["elapsed"].items():  # cells interrupted at the time limit are skipped from now on
            if 0 < index < last and secs >= timeout:
                skip.setdefault(kept[index - 1], "timeout")
        stopped = run["died_at"] if run["died_at"] is not None else run["hung_at"]
        how = "kernel died" if run["died_at"] is not None else "timeout"
        if stopped is not None and stopped < last:  # a student cell before the check killed or hung the kernel
            culprit = prefix[stopped - 1]
            if culprit.solution_of == check.exercise:
                what = "the kernel died" if how == "kernel died" else "it ran past the time limit and ignored the interrupt"
                return zero(how, f"your solution cell (cell {culprit.index}) never finished: {what}")
            skip[kept[stopped - 1]] = how
            continue
        cell = run["cells"][last]
        output = _text_outputs(cell)
        if stopped == last:
            if how == "kernel died":
                return zero(how, "the kernel died during the check (os._exit, a crash, or too much memory); "
                                 "the other exercises are graded in kernels of their own", output)
            return zero(how, f"the check ran past {timeout} s and ignored the interrupt", output)
        reply = replies.get(last)
        status = (reply or {}).get("content", {}).get("status")
        if status == "ok" and _signed_pass(cell, nonce, check.grade_id):
            return ExerciseScore(check.grade_id, check.points, check.points, "passed", "", output)
        if status == "ok":
            return zero("failed", "the check did not report a result: its output was suppressed or forged", output)
        message = _error_message(cell, reply)
        if run["elapsed"].get(last, 0) >= timeout:
            return zero("timeout", f"the check ran past the time limit ({timeout} s per cell)\n{message}", output)
        ename = (reply or {}).get("content", {}).get("ename", "")
        if ename == "GradingTampered":
            return zero("tampered", message, output)
        if "asks for your own code" in message:
            return zero("reference used", message, output)
        return zero("failed", message, output)


# --------------------------------------------------------------------------- review flags

_REVIEW_PATTERNS = {
    r"\bsys\.modules\b": "touches sys.modules",
    r"\bset(profile|trace)\b": "sets a profiler or tracer",
    r"\b_getframe\b|\binspect\.(stack|currentframe)\b|\bf_back\b|\bf_locals\b": "inspects stack frames",
    r"get_ipython\(\)\.(?!run_line_magic|magic\b)\w+\s*=": "replaces part of the IPython shell",
    r"\bcourse\.grading\b|\bcourse_grading\b": "refers to the grader",
    r"\bcourse\.exercises\b|\bcheck_\w+\s*=": "refers to or rebinds a checker",
    r"\b__code__\b|\b__globals__\b|\b__defaults__\b": "rewrites function internals",
    r"\bbuiltins\b|__builtins__": "touches builtins",
    r"\bos\._exit\b|\bctypes\b|\bsignal\.": "can kill or signal the kernel",
    r"\bgc\.get_(objects|referrers)\b": "walks the garbage collector",
    r"application/vnd\.course\.grade": "writes a grade record",
}


def review_flags(student, instructor) -> list[dict]:
    """Constructs in cells the student wrote or changed that a TA may want to read (they do not change scores)."""
    released = {c.source for c in release_notebook(instructor).cells} | {c.source for c in instructor.cells}
    flags = []
    for i, cell in enumerate(student.cells):
        if cell.cell_type != "code" or cell.source in released:
            continue
        for n, line in enumerate(cell.source.splitlines(), 1):
            for pattern, why in _REVIEW_PATTERNS.items():
                if re.search(pattern, line):
                    flags.append({"cell": i, "line": n, "why": why, "code": line.strip()[:160]})
    return flags


# --------------------------------------------------------------------------- grade

async def _grade_checks(checks, cells, cwd, timeout, memory, jobs) -> list[ExerciseScore]:
    slots, skip = asyncio.Semaphore(max(1, jobs)), {}
    return list(await asyncio.gather(*[_grade_check(c, cells, skip, cwd, timeout, memory, slots) for c in checks]))


def grade(student_path: Path, instructor_path: Path | None = None, timeout: int = 120,
          report_path: Path | None = None, memory_limit_gb: float | None = None, write: bool = True,
          jobs: int | None = None) -> dict:
    """Grade one student notebook, each check in a fresh kernel, up to jobs kernels at a time (default: the
    number of cores). Returns the report dict (and writes it beside the notebook unless write is False)."""
    jobs = jobs or os.cpu_count() or 1
    student_path = Path(student_path)
    instructor_path = Path(instructor_path) if instructor_path else NOTEBOOKS / student_path.name
    if not student_path.exists():
        raise FileNotFoundError(f"no student notebook at {student_path}")
    if not instructor_path.exists():
        raise FileNotFoundError(f"no instructor notebook at {instructor_path}; pass --instructor")
    start = time.monotonic()
    instructor = nbformat.read(instructor_path, as_version=4)
    try:
        student = nbformat.read(student_path, as_version=4)
    except Exception as err:  # noqa: BLE001 - an unreadable file scores zero, it does not stop a class's grading
        student, unreadable = None, f"the notebook could not be read: {type(err).__name__}: {err}"
    memory = int(memory_limit_gb * 2**30) if memory_limit_gb else None
    if student is None:
        scores = [ExerciseScore(_meta(c)["grade_id"], 0.0, float(_meta(c).get("points", 1)), "not run", unreadable)
                  for c in check_cells(instructor)]
        flags = []
    else:
        cells, checks = grading_plan(clear_outputs(student), instructor)
        scores = asyncio.run(_grade_checks(checks, cells, instructor_path.parent, timeout, memory, jobs))
        flags = review_flags(student, instructor)
    report = {"notebook": str(student_path), "instructor": str(instructor_path),
              "points": sum(s.points for s in scores), "max_points": sum(s.max_points for s in scores),
              "exercises": [asdict(s) for s in scores], "review_flags": flags,
              "seconds": round(time.monotonic() - start, 1)}
    if write:
        report_path = Path(report_path) if report_path else student_path.with_suffix(".grade.json")
        report_path.write_text(json.dumps(report, indent=2))
        report["report_path"] = str(report_path)
    return report


def format_report(report: dict) -> str:
    rows = [f"{'exercise':<34}{'points':>10}  status", "-" * 58]
    for ex in report["exercises"]:
        rows.append(f"{ex['grade_id']:<34}{ex['points']:>5g} / {ex['max_points']:<3g} {ex['status']}")
    rows += ["-" * 58, f"{'total':<34}{report['points']:>5g} / {report['max_points']:<3g}"]
    if report.get("review_flags"):
        rows.append(f"{len(report['review_flags'])} line(s) flagged for review: see the JSON report")
    return "\n".join(rows)
