"""Running a notebook leaves git clean: `make git-filter` (run by `make lab`) installs nbstripout as the filter, and
`make update` pulls the next version over notebooks that were run."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NOTEBOOKS, ROOT

SOURCE = NOTEBOOKS[2]


def git(repo, *args, check=True):
    result = subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=test", *args], cwd=repo,
                            capture_output=True, text=True)
    assert result.returncode == 0 or not check, result.stdout + result.stderr
    return result.stdout


def make(repo, target):
    result = subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), target,
                             f"VENV={sys.prefix}"], cwd=repo, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def write(path, nb):
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def run_it(path):
    """What Run All and a save leave in the file: outputs, execution counts, the widget state."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["execution_count"] = 7
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["a student's output\n"]}]
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    write(path, nb)
    return nb


@pytest.fixture
def course(tmp_path):
    """An upstream repository holding one notebook, and a student's clone with the filter installed."""
    if not (Path(sys.prefix) / ".installed").exists():
        pytest.skip(f"make git-filter needs the environment made by `make venv`; {sys.prefix} is another one")
    upstream, clone = tmp_path / "upstream", tmp_path / "student"
    upstream.mkdir()
    git(upstream, "init", "-q")
    shutil.copy(SOURCE, upstream / SOURCE.name)
    git(upstream, "add", SOURCE.name)
    git(upstream, "commit", "-q", "-m", "the course")
    git(tmp_path, "clone", "-q", str(upstream), str(clone))
    code, out = make(clone, "git-filter")
    assert code == 0 and "git filter installed" in out, out
    return upstream, clone


def test_outputs_never_reach_git(course):
    _, clone = course
    ran = run_it(clone / SOURCE.name)
    assert git(clone, "diff") == "", "git sees the outputs"
    git(clone, "add", SOURCE.name)
    assert git(clone, "diff", "--cached") == "", "outputs were staged"
    stored = json.loads(git(clone, "show", f":{SOURCE.name}"))
    code = [c for c in stored["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert [c["id"] for c in stored["cells"]] == [c["id"] for c in ran["cells"]], "cell ids must be kept"
    assert "widgets" not in stored["metadata"]
    assert git(clone, "show", f":{SOURCE.name}") == SOURCE.read_text(), "the filter reformatted a clean notebook"


def test_make_update_pulls_over_a_notebook_that_was_run(course):
    upstream, clone = course
    run_it(clone / SOURCE.name)
    nb = json.loads((upstream / SOURCE.name).read_text())
    nb["cells"][0]["source"] = ["# the course's next version\n"]
    write(upstream / SOURCE.name, nb)
    git(upstream, "commit", "-q", "-am", "next version")
    pull = subprocess.run(["git", "pull", "-q", "--ff-only"], cwd=clone, capture_output=True, text=True)
    assert pull.returncode != 0, "plain git pull is expected to stop at the outputs on disk"
    code, out = make(clone, "update")
    assert code == 0, out
    assert "# the course's next version" in (clone / SOURCE.name).read_text()
    assert git(clone, "status", "--porcelain") == ""


def test_an_edited_cell_still_reaches_git_and_stops_an_overwriting_pull(course):
    upstream, clone = course
    nb = run_it(clone / SOURCE.name)
    nb["cells"][1]["source"] = ["# a student's answer\n"]
    write(clone / SOURCE.name, nb)
    assert "a student's answer" in git(clone, "diff")
    theirs = json.loads((upstream / SOURCE.name).read_text())
    theirs["cells"][1]["source"] = ["# the course's fix\n"]
    write(upstream / SOURCE.name, theirs)
    git(upstream, "commit", "-q", "-am", "a fix in the same cell")
    code, out = make(clone, "update")
    assert code != 0 and "overwritten" in out, out
    assert "a student's answer" in (clone / SOURCE.name).read_text()
