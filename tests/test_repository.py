"""Repository hygiene: committed notebooks carry no outputs, and the pins live in one place."""
import re
import subprocess
import tomllib

import yaml

from conftest import NOTEBOOKS, read


def test_notebooks_are_committed_without_outputs(root):
    tracked = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=root, capture_output=True, text=True).stdout.split()
    paths = [root / p for p in tracked] or NOTEBOOKS
    for path in paths:
        for cell in read(path).cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


def test_notebooks_use_the_workbook_kernel(root):
    # one name everywhere: the kernel make registers (inside .venv for make test, for the user by make lab)
    name = re.search(r"^KERNEL_NAME \?= (\S+)$", (root / "Makefile").read_text(), re.M).group(1)
    for path in NOTEBOOKS + sorted((root / "tests" / "browser").glob("*.ipynb")):
        assert read(path).metadata["kernelspec"]["name"] == name == "diffusion-workbook", path.name


def _requirements(path):
    names = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.split(r"==", line)
            names[name.lower()] = version
    return names


def test_pins_live_in_requirements_txt_and_everything_reads_them(root):
    pins = _requirements(root / "requirements.txt")
    assert pins["torch"] == "2.13.0"
    for needed in ["diffusers", "jupyterlab", "ipywidgets", "matplotlib", "numpy", "scipy", "nbval", "tqdm",
                   "safetensors", "scikit-learn"]:
        assert needed in pins, needed
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    assert "dependencies" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["dependencies"]["file"] == ["requirements.txt"]
    assert "requirements.txt" in (root / "Makefile").read_text()


def test_environment_yml_installs_the_same_set_as_pyproject(root):
    env = yaml.safe_load((root / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda and "pip" in conda
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-r requirements.txt" in pip_section and "-e ." in pip_section
    # Anything else listed must be a package pyproject (through requirements.txt) pins the same way.
    pins = _requirements(root / "requirements.txt")
    for extra in (p for p in pip_section if not p.startswith("-")):
        name, _, version = extra.partition("==")
        assert pins.get(name.lower()) == version, f"environment.yml lists {extra}, unlike pyproject"
