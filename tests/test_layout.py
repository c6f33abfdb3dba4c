"""The package's layout: no import cycle between course modules, no course import inside a function, and no
notebook, benchmark or checker reaching a private (underscore) name of course."""
import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "course"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (``from . import x`` -> the package itself)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def course_imports(path: Path, modules: set[str]):
    """(imported course module, line, inside a function or class?) for every import in the file."""
    module, is_package = module_name(path), path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, nested):
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, nested) for a in child.names if a.name.split(".")[0] == "course")
            elif isinstance(child, ast.ImportFrom):
                target = resolve(module, is_package, child)
                if target.split(".")[0] != "course":
                    continue
                for alias in child.names:  # `from . import ddim` imports the module course.ddim
                    full = f"{target}.{alias.name}"
                    found.append((full if full in modules else target, child.lineno, nested))
            visit(child, inner)
    visit(tree, False)
    return found


def package_graph():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    graph, nested = {}, []
    for path in files:
        src = module_name(path)
        for target, line, inside in course_imports(path, modules):
            if inside:
                nested.append(f"{path.relative_to(ROOT)}:{line} imports {target} inside a function or class")
            if target != src and target in modules:  # an import inside a function still makes a cycle
                graph.setdefault(src, set()).add(target)
    return modules, graph, nested


def find_cycle(graph):
    """One cycle as a list of modules, or None (depth-first search with colours)."""
    state, stack = {}, []

    def dfs(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_cycle_finder_finds_cycles_and_accepts_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_course_imports_are_found_at_module_level_and_inside_functions(tmp_path, monkeypatch):
    fake = ROOT / "course" / "_layout_probe.py"
    modules = {"course", "course.fid", "course.train", "course._layout_probe"}
    source = "from . import fid\n\ndef f():\n    from .train import load\n    import course.train\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source)
    found = course_imports(fake, modules)
    assert ("course.fid", 1, False) in found
    assert ("course.train", 4, True) in found and ("course.train", 5, True) in found


def test_no_import_cycle_between_course_modules():
    _, graph, _ = package_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_course_module_is_imported_inside_a_function():
    _, _, nested = package_graph()
    assert not nested, "\n".join(nested)


def test_topic_modules_do_not_import_the_presentation_layer():
    _, graph, _ = package_graph()
    presentation = ("course.train", "course.grading", "course.selfcheck", "course.widgets", "course.exercises",
                    "course.site")
    foundation_and_topics = [m for m in graph if not m.startswith(presentation) and m != "course"]
    wrong = [f"{m} -> {t}" for m in foundation_and_topics for t in graph[m] if t.startswith(presentation)]
    assert not wrong, wrong


def code_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return path.read_text()


PRIVATE_USE = re.compile(r"\b(?:course\.)?(?:[a-z_]+\.)*(?:attention|checkpoints|controlnet|cn|datasets|ddim|ddpm|"
                         r"fid|fitting|forward|guidance|ldm|lora|metrics|models|pag|plotting|prompt_to_prompt|results|schedules|sde|"
                         r"seq2seq|train|validate|widgets|mixture)\._[a-z]\w*")


@pytest.mark.parametrize("path", sorted(ROOT.glob("notebooks/*.ipynb")) + sorted(ROOT.glob("benchmarks/*.py"))
                         + sorted((PACKAGE / "exercises").glob("*.py")), ids=lambda p: p.name)
def test_no_private_course_name_is_used_outside_its_module(path):
    used = sorted(set(PRIVATE_USE.findall(code_of(path))))
    assert not used, f"{path.name} uses private names: {used}"


def test_private_name_pattern_catches_what_it_should():
    assert PRIVATE_USE.findall("x = pag._tokens(attn, h)\ny = course.train.checkpoints._x") == \
        ["pag._tokens", "course.train.checkpoints._x"]
    assert not PRIVATE_USE.findall("pag.to_tokens(attn, h); model.__class__; x._private")
