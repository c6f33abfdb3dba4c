import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


class NbvalThreads:
    """nbval's kernels get every usable CPU as torch threads: while nbval runs a notebook the suite does nothing
    else, so the package's rule for a shared machine (one CPU left free for the browser and the server) would only
    idle a core. The variable is set while nbval starts the notebook's kernel (on its first cell's setup) and
    restored right after, so other tests' kernels (the grader's, the browser tests') keep the rule.

    Registered as a plugin (``pytest_configure``), not as this conftest's hook: a conftest's hooks see only the
    items under its folder, and the notebooks are not under tests/."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item):
        nbval_cell = type(item).__module__.startswith("nbval")
        set_here = nbval_cell and "COURSE_NUM_THREADS" not in os.environ
        if set_here:
            from course import device

            os.environ["COURSE_NUM_THREADS"] = str(device.usable_cpus()[0])
        try:
            yield
        finally:
            if set_here:
                os.environ.pop("COURSE_NUM_THREADS", None)


def pytest_configure(config):
    config.pluginmanager.register(NbvalThreads(), "course-nbval-threads")


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
