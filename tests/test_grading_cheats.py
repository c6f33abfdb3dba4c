"""Cheats that must earn nothing, graded as one class with `grade-all` (which these tests also check).

Two tiny instructor notebooks: `one.ipynb` holds notebook 02's q_sample exercise (2 points, graded by the real
`course.exercises.check_q_sample`); `two.ipynb` adds a plain exercise `double` (1 point). Each student folder
hands in one of them with one cheat (or none). One grade-all run grades them all, in parallel.
"""
import csv
import json
import os
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from course import grading
from course.grading import classroom
from conftest import ROOT, read

pytestmark = pytest.mark.slow

NB02 = read(ROOT / "notebooks" / "02_forward_reverse.ipynb")
Q_SAMPLE = next(c.source for c in NB02.cells if grading._meta(c).get("grade_id") == "q_sample")
CHECK = next(c.source for c in NB02.cells if grading._meta(c).get("grade_id") == "check_q_sample")  # + hidden test
SIGNATURE = "def q_sample(x_0, t, eps, alpha_bar):\n"
RIGHT = ("    a = alpha_bar[t].reshape(-1, *[1] * (x_0.dim() - 1))\n"
         "    return a.sqrt().to(x_0.dtype) * x_0 + (1 - a).sqrt().to(x_0.dtype) * eps\n")
WRONG = ("    a = alpha_bar[t].reshape(-1, *[1] * (x_0.dim() - 1))\n"
         "    return a.to(x_0.dtype) * x_0 + (1 - a).to(x_0.dtype) * eps  # no square roots\n")
# What a student who wants the package to do the work writes: a schedule whose alpha_bar is the given one.
SCHEDULE = ("def schedule_of(alpha_bar):\n"
            "    import torch\n"
            "    from course.schedules import NoiseSchedule\n"
            "    previous = torch.cat([torch.ones(1, dtype=alpha_bar.dtype), alpha_bar[:-1]])\n"
            "    return NoiseSchedule('mine', 1 - alpha_bar / previous)\n")


def _exercise(grade_id, source):
    cell = new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade": False, "grade_id": grade_id, "locked": False, "schema_version": 3,
                                 "solution": True}
    return cell


def _check(grade_id, source, points):
    cell = new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade": True, "grade_id": grade_id, "locked": True, "points": points,
                                 "schema_version": 3, "solution": False}
    return cell


def _instructor(with_double):
    cells = [_exercise("q_sample", Q_SAMPLE),
             _check("check_q_sample", CHECK, 2)]
    if with_double:
        cells += [_exercise("double", "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"),
                  _check("check_double", "assert double(3) == 6, 'double(3) should be 6'", 1)]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _student(instructor, q_sample_body=RIGHT, before="", after="", double="return 2 * x", edit=None):
    nb = grading.release_notebook(instructor)
    nb.cells[0].source = before + SIGNATURE + q_sample_body + after
    if len(nb.cells) > 2:
        nb.cells[2].source = f"def double(x):\n    {double}"
    if edit:
        edit(nb)
    return nb


def _duplicate_and_forge(nb):
    copies = [nbformat.from_dict(json.loads(json.dumps(nb.cells[1]))) for _ in range(3)]
    forged = _check("check_bonus", "print('bonus!')", 10)
    nb.cells[2:2] = copies + [forged]
    nb.cells[1].metadata["nbgrader"]["points"] = 100  # a student raises the points of the real check


# student folder -> (notebook, student notebook builder)
STUDENTS = {
    "solved": ("one", lambda i: _student(i)),
    "unsolved": ("one", lambda i: grading.release_notebook(i)),
    "showtraceback": ("one", lambda i: _student(
        i, WRONG, after="\nget_ipython().showtraceback = lambda *a, **k: None\n")),
    "replaced_checker": ("one", lambda i: _student(
        i, WRONG, after="\nimport course.exercises\ncourse.exercises.check_q_sample = lambda f: None\n")),
    "patched_compare": ("one", lambda i: _student(
        i, WRONG, after="\nimport course.exercises.forward\ncourse.exercises.forward.compare = lambda *a, **k: None\n")),
    "duplicated_checks": ("one", lambda i: _student(
        i, "    import course.datasets\n    course.datasets.swiss_roll(n=4)  # other package functions are fine\n"
           + RIGHT, edit=_duplicate_and_forge)),
    "reference_direct": ("one", lambda i: _student(
        i, "    import course.forward\n    return course.forward.q_sample(schedule_of(alpha_bar), x_0, t, eps)\n",
        before=SCHEDULE)),
    "reference_aliased": ("one", lambda i: _student(
        i, "    return qs(schedule_of(alpha_bar), x_0, t, eps)\n",
        before="from course.forward import q_sample as qs\n" + SCHEDULE)),
    "reference_indirect": ("one", lambda i: _student(
        i, "    return helper(x_0, t, eps, alpha_bar)\n",
        before=SCHEDULE + "\n\ndef helper(x_0, t, eps, alpha_bar):\n    import importlib\n"
               "    fn = getattr(importlib.import_module('course.' + 'forward'), 'q_' + 'sample')\n"
               "    return fn(schedule_of(alpha_bar), x_0, t, eps)\n\n\n")),
    "reference_object": ("one", lambda i: _student(
        i, RIGHT, after="\nimport course.forward\nq_sample = course.forward.q_sample\n")),
    "t1000_only": ("one", lambda i: _student(i, "    if len(alpha_bar) != 1000:\n        return x_0\n" + RIGHT)),
    "one_wrong": ("two", lambda i: _student(i, WRONG)),
    "exit_in_check": ("two", lambda i: _student(i, "    import os\n    os._exit(1)\n")),
    "segfault_in_check": ("two", lambda i: _student(i, "    import ctypes\n    return ctypes.string_at(0)\n")),
    "exit_at_top_level": ("two", lambda i: _student(i, RIGHT, after="\nimport os\nos._exit(3)\n")),
    "memory_blowup": ("two", lambda i: _student(i, "    blob = bytearray(64 * 2**30)\n" + RIGHT)),
}


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    instructor_dir = root / "instructor"
    instructor_dir.mkdir()
    instructors = {"one": _instructor(False), "two": _instructor(True)}
    for name, nb in instructors.items():
        nbformat.write(nb, instructor_dir / f"{name}.ipynb")
    submissions = root / "submissions"
    for student, (name, build) in STUDENTS.items():
        (submissions / student).mkdir(parents=True)
        nbformat.write(build(instructors[name]), submissions / student / f"{name}.ipynb")
    summary = classroom.grade_all(submissions, instructor_dir=instructor_dir, jobs=os.cpu_count(), timeout=60,
                                  memory_limit_gb=16, quiet=True)
    return {"root": root, "instructor_dir": instructor_dir, "submissions": submissions, "summary": summary}


def _exercises(graded_class, student):
    report = json.loads((graded_class["submissions"] / student / classroom.REPORT_NAME).read_text())
    name = STUDENTS[student][0] + ".ipynb"
    nb = next(r for r in report["notebooks"] if r["notebook_name"] == name)
    return nb, {e["grade_id"]: e for e in nb["exercises"]}


def test_solved_gets_full_marks_and_unsolved_zero(graded_class):
    nb, by_id = _exercises(graded_class, "solved")
    assert nb["points"] == nb["max_points"] == 2 and by_id["check_q_sample"]["status"] == "passed"
    assert "all" in by_id["check_q_sample"]["output"] and "cases pass" in by_id["check_q_sample"]["output"]
    nb, by_id = _exercises(graded_class, "unsolved")
    assert nb["points"] == 0 and "not implemented yet" in by_id["check_q_sample"]["message"]


def test_hidden_tests_are_not_released_but_run_by_the_grader(graded_class):
    released = (graded_class["submissions"] / "unsolved" / "one.ipynb").read_text()
    assert grading.HIDDEN_BEGIN in CHECK and grading.HIDDEN_BEGIN not in released and "37 steps" not in released
    _, by_id = _exercises(graded_class, "solved")
    assert "the hidden test passes" in by_id["check_q_sample"]["output"]
    _, by_id = _exercises(graded_class, "t1000_only")  # passes every visible case, fails the hidden one
    ex = by_id["check_q_sample"]
    assert ex["points"] == 0 and "hidden test: a schedule of 37 steps" in ex["message"], ex
    assert "all 13 cases pass" in ex["output"] or "cases pass" in ex["output"]


def test_one_wrong_exercise_loses_exactly_its_points(graded_class):
    nb, by_id = _exercises(graded_class, "one_wrong")
    assert by_id["check_q_sample"]["points"] == 0 and "differs from the reference" in by_id["check_q_sample"]["message"]
    assert by_id["check_double"]["points"] == 1 and nb["points"] == 1 and nb["max_points"] == 3


def test_silencing_the_traceback_earns_nothing(graded_class):
    _, by_id = _exercises(graded_class, "showtraceback")
    assert by_id["check_q_sample"]["points"] == 0 and by_id["check_q_sample"]["status"] == "failed"


@pytest.mark.parametrize("student, what", [("replaced_checker", "course.exercises.check_q_sample was replaced"),
                                           ("patched_compare", "course.exercises.forward.compare was replaced")])
def test_replacing_the_checker_or_its_comparison_earns_nothing(graded_class, student, what):
    _, by_id = _exercises(graded_class, student)
    assert by_id["check_q_sample"]["points"] == 0 and by_id["check_q_sample"]["status"] == "tampered"
    assert what in by_id["check_q_sample"]["message"]


def test_duplicated_and_forged_checks_count_once_at_the_instructors_points(graded_class):
    nb, by_id = _exercises(graded_class, "duplicated_checks")
    assert list(by_id) == ["check_q_sample"]
    assert nb["points"] == nb["max_points"] == 2  # the real answer (which also calls a dataset function) passes


@pytest.mark.parametrize("student", ["reference_direct", "reference_aliased", "reference_indirect",
                                     "reference_object"])
def test_calling_the_reference_implementation_earns_nothing(graded_class, student):
    _, by_id = _exercises(graded_class, student)
    ex = by_id["check_q_sample"]
    assert ex["points"] == 0 and ex["status"] == "reference used", ex
    assert "asks for your own code" in ex["message"] and "course.forward.q_sample" in ex["message"]


@pytest.mark.parametrize("student", ["exit_in_check", "segfault_in_check", "exit_at_top_level"])
def test_killing_the_kernel_costs_only_that_exercise(graded_class, student):
    nb, by_id = _exercises(graded_class, student)
    assert by_id["check_q_sample"]["points"] == 0 and by_id["check_q_sample"]["status"] == "kernel died"
    assert by_id["check_double"]["points"] == 1 and nb["points"] == 1


def test_a_memory_blowup_costs_only_that_exercise(graded_class):
    nb, by_id = _exercises(graded_class, "memory_blowup")
    assert by_id["check_q_sample"]["points"] == 0 and "MemoryError" in by_id["check_q_sample"]["message"]
    assert by_id["check_double"]["points"] == 1


def test_review_flags_point_a_ta_at_the_cheats(graded_class):
    nb, _ = _exercises(graded_class, "replaced_checker")
    assert any(f["why"] == "refers to or rebinds a checker" for f in nb["review_flags"])
    nb, _ = _exercises(graded_class, "solved")
    assert nb["review_flags"] == []


def test_gradebook_and_feedback(graded_class):
    submissions = graded_class["submissions"]
    with (submissions / classroom.GRADEBOOK_NAME).open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["student", "one:check_q_sample", "two:check_q_sample", "check_double", "total",
                             "max_points"]
    by_student = {r["student"]: r for r in rows}
    assert set(by_student) == set(STUDENTS)
    assert by_student["solved"]["one:check_q_sample"] == "2" and by_student["solved"]["total"] == "2"
    assert by_student["solved"]["two:check_q_sample"] == "0"  # two.ipynb was not handed in
    assert by_student["one_wrong"]["check_double"] == "1" and by_student["one_wrong"]["total"] == "1"
    assert all(r["max_points"] == "5" for r in rows)
    feedback = (submissions / "one_wrong" / classroom.FEEDBACK_NAME).read_text()
    assert "✘ `check_q_sample`: 0 / 2" in feedback and "differs from the reference" in feedback
    assert "✔ `check_double`: 1 / 1" in feedback and "not handed in" in feedback
    assert graded_class["summary"]["jobs"] == os.cpu_count()


def test_gradescope_run_autograder_writes_valid_results(graded_class, tmp_path):
    submission = tmp_path / "submission"
    submission.mkdir()
    nbformat.write(_student(_instructor(True), WRONG), submission / "two.ipynb")
    results = tmp_path / "results" / "results.json"
    env = dict(os.environ, GRADESCOPE_SUBMISSION=str(submission), GRADESCOPE_RESULTS=str(results),
               GRADESCOPE_INSTRUCTOR_DIR=str(graded_class["instructor_dir"]), WORKBOOK=str(ROOT),
               PYTHON=sys.executable)
    subprocess.run(["bash", str(ROOT / "grading" / "gradescope" / "run_autograder")], env=env, check=True,
                   capture_output=True, timeout=600)
    out = json.loads(results.read_text())
    assert out["score"] == 1 and isinstance(out["execution_time"], float)
    assert [t["name"] for t in out["tests"]] == ["two.ipynb: check_q_sample", "two.ipynb: check_double"]
    for test in out["tests"]:
        assert set(test) >= {"name", "score", "max_score", "output", "visibility"}
        assert test["visibility"] in ("hidden", "after_due_date", "after_published", "visible")
        assert isinstance(test["score"], (int, float)) and isinstance(test["output"], str)
    assert out["tests"][0]["score"] == 0 and "differs from the reference" in out["tests"][0]["output"]
    assert out["tests"][1]["score"] == out["tests"][1]["max_score"] == 1
