"""The release and grading pipeline, on the real notebooks and on a tiny one made here."""
import json
import os
import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from course import grading
from course.grading import cli
from conftest import NOTEBOOKS, error_cells, execute_notebook, paste_solutions, read

GRADED = [p for p in NOTEBOOKS if grading.check_cells(read(p))]
# Grading a notebook end to end replays it once per check, in fresh kernels: all twelve take about 20 minutes on
# 2 cores, more than the rest of the suite. `make test` grades two that between them hold every kind of check
# (02: plain asserts and a hidden test; 06: three checker calls on the shipped models); `make test-all`
# (COURSE_GRADE_ALL=1) grades every notebook with exercises.
SUITE_SAMPLE = ("02_forward_reverse.ipynb", "06_cfg.ipynb")
GRADED_END_TO_END = GRADED if os.environ.get("COURSE_GRADE_ALL") else [p for p in GRADED if p.name in SUITE_SAMPLE]


def solution_lines(nb):
    lines = []
    for cell in nb.cells:
        if grading.is_solution_cell(cell):
            inside = False
            for line in cell.source.splitlines():
                if line.strip() == grading.BEGIN:
                    inside = True
                elif line.strip() == grading.END:
                    inside = False
                elif inside and line.strip():
                    lines.append(line.strip())
    return lines


def test_strip_solution_keeps_indentation_and_rejects_broken_markers():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n"
    assert grading.strip_solution(src) == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    with pytest.raises(ValueError, match="without"):
        grading.strip_solution("### BEGIN SOLUTION\nx = 1\n")


def test_strip_hidden_tests_removes_the_block_and_its_markers():
    src = f"check(f)\n{grading.HIDDEN_BEGIN}\nassert f(2) == 4\n{grading.HIDDEN_END}\nprint('done')"
    assert grading.strip_hidden_tests(src) == "check(f)\nprint('done')"
    with pytest.raises(ValueError, match="without"):
        grading.strip_hidden_tests(f"{grading.HIDDEN_BEGIN}\nassert True")


def test_a_notebook_has_a_real_hidden_test():
    hidden = [c for p in GRADED for c in grading.check_cells(read(p)) if grading.has_hidden_tests(c.source)]
    assert hidden, "no check cell holds hidden tests"
    assert all(re.search(r"compare\(|assert ", c.source.split(grading.HIDDEN_BEGIN)[1]) for c in hidden)


def test_every_checker_has_its_reference_registered():
    import course.exercises as ex
    from course.grading import references

    registry = references.registry()
    checkers = {getattr(ex, n) for n in dir(ex) if n.startswith("check_")}
    assert checkers <= set(registry), sorted(c.__name__ for c in checkers - set(registry))
    for checker, refs in registry.items():
        assert refs and all(references.code_objects(r) for r in refs), checker.__name__


def test_plan_counts_each_instructor_check_once_at_its_points():
    instructor = read(next(p for p in GRADED if p.name.startswith("02")))
    student = grading.release_notebook(instructor)
    check = next(c for c in student.cells if grading.is_check_cell(c))
    copies = [nbformat.from_dict(json.loads(json.dumps(check))) for _ in range(3)]
    for copy in copies:
        copy.metadata["nbgrader"]["points"] = 50
    forged = nbformat.from_dict(json.loads(json.dumps(check)))
    forged.metadata["nbgrader"]["grade_id"] = "check_bonus"
    at = student.cells.index(check)
    student.cells[at + 1:at + 1] = copies + [forged]
    cells, checks = grading.grading_plan(student, instructor)
    assert [c.grade_id for c in checks] == [grading._meta(c)["grade_id"] for c in grading.check_cells(instructor)]
    assert [c.points for c in checks] == [float(grading._meta(c)["points"]) for c in grading.check_cells(instructor)]
    assert sum(c.source == check.source for c in cells) == 1  # the forged cell runs as plain code; copies do not
    assert all(grading.HIDDEN_BEGIN not in c.source for c in cells)


def test_every_exercise_has_a_check_and_points():
    assert GRADED, "no notebook has graded exercises"
    for path in GRADED:
        nb = read(path)
        exercises = {grading._meta(c)["grade_id"] for c in nb.cells if grading.is_solution_cell(c)}
        checked = {grading.exercise_of(c) for c in grading.check_cells(nb)}
        assert exercises == checked, path.name
        assert all(grading._meta(c)["points"] > 0 for c in grading.check_cells(nb))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    target = tmp_path_factory.mktemp("release")
    grading.release(target_dir=target)
    return target


def test_release_removes_every_solution_and_output(released):
    for path in NOTEBOOKS:
        student = released / path.name
        text = student.read_text()
        nb = read(student)
        for line in solution_lines(read(path)):
            assert line not in text, f"{path.name} leaks solution line {line!r}"
        assert not any(grading.has_solution_block(c.source) for c in nb.cells)
        assert grading.HIDDEN_BEGIN not in text and "hidden test" not in text
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def _through_last_check(nb):
    """The notebook up to its last check cell: what grading depends on, without the demos after it."""
    last = max(i for i, c in enumerate(nb.cells) if grading.is_check_cell(c))
    nb.cells = nb.cells[:last + 1]
    return nb


@pytest.fixture(scope="module")
def graded_copies(released, tmp_path_factory):
    """Student and instructor copies cut after the last check, so each graded notebook runs in full only once
    (under nbval); the grading tests run the part that holds the exercises."""
    target = tmp_path_factory.mktemp("graded")
    (target / "student").mkdir()
    (target / "instructor").mkdir()
    for path in GRADED_END_TO_END:
        nbformat.write(_through_last_check(read(released / path.name)), target / "student" / path.name)
        nbformat.write(_through_last_check(read(path)), target / "instructor" / path.name)
    return target


def test_the_suite_sample_exists_and_has_checker_and_hidden_checks():
    assert {p.name for p in GRADED_END_TO_END} >= set(SUITE_SAMPLE)
    sources = [c.source for p in GRADED_END_TO_END for c in grading.check_cells(read(p))]
    assert any(grading.has_hidden_tests(s) for s in sources) and any("check_" in s for s in sources)


@pytest.mark.slow
@pytest.mark.parametrize("path", GRADED_END_TO_END, ids=lambda p: p.name)
def test_released_notebook_fails_exactly_at_its_check_cells(path, graded_copies):
    nb = execute_notebook(read(graded_copies / "student" / path.name), path.parent)
    checks = [i for i, c in enumerate(nb.cells) if grading.is_check_cell(c)]
    assert error_cells(nb) == checks
    for i in checks:
        assert "not implemented yet" in "".join(o.get("evalue", "") for o in nb.cells[i].outputs)


@pytest.mark.slow
@pytest.mark.parametrize("path", GRADED_END_TO_END, ids=lambda p: p.name)
def test_reference_solutions_pasted_back_get_full_marks(path, graded_copies, tmp_path):
    instructor = graded_copies / "instructor" / path.name
    student = paste_solutions(read(graded_copies / "student" / path.name), read(instructor))
    submitted = tmp_path / path.name
    nbformat.write(student, submitted)
    report = grading.grade(submitted, instructor)
    assert report["points"] == report["max_points"] > 0, report
    assert json.loads((tmp_path / (path.stem + ".grade.json")).read_text())["points"] == report["points"]


@pytest.mark.slow
def test_one_wrong_exercise_loses_exactly_its_points_and_edited_checks_do_not_help(graded_copies, tmp_path):
    path = graded_copies / "instructor" / next(p.name for p in GRADED if p.name.startswith("02"))
    student = paste_solutions(read(graded_copies / "student" / path.name), read(path))
    for cell in student.cells:
        if grading._meta(cell).get("grade_id") == "q_posterior":  # a wrong variance
            cell.source = cell.source.replace("variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * betas",
                                              "variance = betas")
            assert "variance = betas" in cell.source
        if grading._meta(cell).get("grade_id") == "check_q_posterior":  # a student "fixes" the check
            cell.source = "print('all good')"
    submitted = tmp_path / path.name
    nbformat.write(student, submitted)
    report = grading.grade(submitted, path)
    by_id = {e["grade_id"]: e for e in report["exercises"]}
    assert by_id["check_q_posterior"]["points"] == 0 and by_id["check_q_posterior"]["status"] == "failed"
    assert "variance differs" in by_id["check_q_posterior"]["message"]
    assert by_id["check_q_sample"]["points"] == by_id["check_q_sample"]["max_points"]
    assert report["points"] == report["max_points"] - by_id["check_q_posterior"]["max_points"]


def _tiny_course(tmp_path, answer_source):
    """A two-exercise instructor notebook and a student copy whose first answer is answer_source."""
    def exercise(grade_id, body):
        cell = new_code_cell(f"def {grade_id}(x):\n    ### BEGIN SOLUTION\n    {body}\n    ### END SOLUTION")
        cell.metadata["nbgrader"] = {"solution": True, "grade": False, "grade_id": grade_id}
        return cell

    def check(grade_id, call, points):
        cell = new_code_cell(f"assert {call}, 'wrong'")
        cell.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": f"check_{grade_id}",
                                     "points": points}
        return cell

    instructor = new_notebook(cells=[exercise("double", "return 2 * x"), check("double", "double(3) == 6", 2),
                                     exercise("square", "return x * x"), check("square", "square(3) == 9", 3)])
    instructor.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "instructor").mkdir()
    nbformat.write(instructor, tmp_path / "instructor" / "tiny.ipynb")
    student = grading.release_notebook(instructor)
    student.cells[0].source = f"def double(x):\n    {answer_source}"
    student.cells[2].source = "def square(x):\n    return x * x"
    nbformat.write(student, tmp_path / "tiny.ipynb")
    return tmp_path / "tiny.ipynb", tmp_path / "instructor" / "tiny.ipynb"


@pytest.mark.slow
def test_an_infinite_loop_scores_zero_and_grading_finishes(tmp_path):
    student, instructor = _tiny_course(tmp_path, "while True:\n        pass")
    report = grading.grade(student, instructor, timeout=5)
    by_id = {e["grade_id"]: e for e in report["exercises"]}
    assert by_id["check_double"]["status"] == "timeout" and by_id["check_double"]["points"] == 0
    assert by_id["check_square"]["status"] == "passed" and report["points"] == 3


@pytest.mark.slow
def test_deleted_check_is_restored_and_cli_prints_a_table(tmp_path, capsys):
    student, instructor = _tiny_course(tmp_path, "return x + x")
    nb = read(student)
    nb.cells = [c for c in nb.cells if grading._meta(c).get("grade_id") != "check_square"]
    nb.cells[-1].source = "def square(x):\n    return x + 1"  # wrong, and its check was deleted
    nbformat.write(nb, student)
    assert cli.main(["grade", str(student), "--instructor", str(instructor)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"check_double\s+2 / 2\s+passed", out)
    assert re.search(r"check_square\s+0 / 3\s+failed", out)
    assert re.search(r"total\s+2 / 5", out)


def test_grade_reports_a_missing_notebook(tmp_path, capsys):
    assert cli.main(["grade", str(tmp_path / "nope.ipynb")]) == 2
    assert "no student notebook" in capsys.readouterr().err
