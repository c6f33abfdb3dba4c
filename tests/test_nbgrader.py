"""nbgrader itself accepts the workbook: schema v3 metadata, generate_assignment, autograde with hidden tests."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course import grading
from conftest import NOTEBOOKS, ROOT, paste_solutions, read

ASSIGNMENT = ["00_start_here.ipynb", "02_forward_reverse.ipynb"]  # the two quickest notebooks with exercises


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_metadata_is_exactly_nbgrader_schema_v3(path):
    from nbgrader.nbgraderformat import MetadataValidator, SchemaTooNewError, ValidationError  # noqa: F401
    from nbgrader.nbgraderformat.v3 import MetadataValidatorV3

    nb = read(path)
    MetadataValidatorV3().validate_nb(nb)  # raises on any extra key
    for cell in nb.cells:
        meta = grading._meta(cell)
        if meta:
            assert meta["schema_version"] == 3 and set(meta) <= {
                "schema_version", "grade", "solution", "locked", "grade_id", "points", "task", "cell_type"}, meta
        # nbgrader finds its markers anywhere in a line, in any cell: elsewhere they break generate_assignment
        if not grading.is_solution_cell(cell):
            assert "BEGIN SOLUTION" not in cell.source and "END SOLUTION" not in cell.source, cell.source
        if not grading.is_check_cell(cell):
            assert "HIDDEN TESTS" not in cell.source, cell.source
        if grading.is_check_cell(cell):
            exercise = grading.exercise_of(cell)
            assert any(grading.is_solution_cell(c) and grading._meta(c)["grade_id"] == exercise for c in nb.cells)


def test_the_validator_rejects_the_old_extra_key():
    from nbgrader.nbgraderformat import ValidationError
    from nbgrader.nbgraderformat.v3 import MetadataValidatorV3

    nb = read(ROOT / "notebooks" / ASSIGNMENT[1])
    check = grading.check_cells(nb)[0]
    check.metadata["nbgrader"]["exercise"] = grading.exercise_of(check)
    with pytest.raises(ValidationError):
        MetadataValidatorV3().validate_nb(nb)


def _nbgrader(course, *args):
    # nbgrader runs `alembic` from PATH: put the environment's bin/ first, active or not
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.Popen([sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={course}"],
                            cwd=course, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(course, *args):
    proc = _nbgrader(course, *args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
def test_nbgrader_generate_assignment_and_autograde(tmp_path):
    course = tmp_path / "course"
    (course / "source" / "ps1").mkdir(parents=True)
    for name in ASSIGNMENT:  # cut after the last check: the demos after it play no part in grading
        nb = read(ROOT / "notebooks" / name)
        last = max(i for i, c in enumerate(nb.cells) if grading.is_check_cell(c))
        nb.cells = nb.cells[:last + 1]
        nbformat.write(nb, course / "source" / "ps1" / name)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.course_id = 'diffusion'\nc.Execute.timeout = 600\n")
    _run(course, "generate_assignment", "ps1", "--force", "--create")
    for name in ASSIGNMENT:
        text = (course / "release" / "ps1" / name).read_text()
        assert grading.BEGIN not in text and grading.HIDDEN_BEGIN not in text and "hidden test" not in text
        for student in ("solved", "unsolved"):
            released = read(course / "release" / "ps1" / name)
            assert grading.check_cells(released)
            submitted = course / "submitted" / student / "ps1"
            submitted.mkdir(parents=True, exist_ok=True)
            if student == "solved":
                released = paste_solutions(released, read(ROOT / "notebooks" / name))
            nbformat.write(released, submitted / name)
    _run(course, "autograde", "ps1", "--force", "--create")

    from nbgrader.api import Gradebook

    max_points = sum(float(grading._meta(c)["points"]) for name in ASSIGNMENT
                     for c in grading.check_cells(read(ROOT / "notebooks" / name)))
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for student, expected in (("solved", max_points), ("unsolved", 0.0)):
            submission = gb.find_submission("ps1", student)
            assert submission.max_score == max_points
            assert submission.score == expected, (student, submission.score)
    # the autograded copy ran the hidden test that the release left out
    autograded = (course / "autograded" / "solved" / "ps1" / ASSIGNMENT[1]).read_text()
    assert "the hidden test passes" in autograded
