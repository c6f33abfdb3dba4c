from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="session")
def root():
    return ROOT


def execute_notebook(nb, path_dir, timeout=300):
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                   resources={"metadata": {"path": str(path_dir)}}).execute()
    return nb


def error_cells(nb):
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and any(o.get("output_type") == "error" for o in c.get("outputs", []))]


def read(path):
    return nbformat.read(path, as_version=4)


def paste_solutions(student, instructor):
    """A student copy with the instructor's solution cells pasted back, matched by grade_id: a fully solved copy."""
    from course import grading

    solutions = {grading._meta(c)["grade_id"]: c.source for c in instructor.cells
                 if grading.is_solution_cell(c)}
    for cell in student.cells:
        if grading.is_solution_cell(cell):
            cell.source = solutions[grading._meta(cell)["grade_id"]]
    return student
