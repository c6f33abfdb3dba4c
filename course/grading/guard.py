"""The grader's side inside the kernel that runs one check (see the README's threat model).

:func:`install` runs first in a fresh kernel, before any student code. It imports the checkers and the reference
registry and fingerprints the grading machinery: every function, class and module bound in the ``course``
modules, every function's code, defaults and the functions of its classes, and the functions of ``torch``,
``torch.Tensor``, ``torch.nn.functional``, ``torch.linalg``, ``numpy``, ``numpy.linalg``, ``math`` and
``builtins``.

:func:`run_check` runs the instructor's check cell. It refuses to run, or to report a pass, if any fingerprint
changed (a student cell replaced a checker, the comparison it uses, a torch function, ...). While the check runs
it watches Python calls with ``sys.setprofile``: a call to the exercise's reference implementation (registered in
:mod:`course.grading.references`) made from student code, or a student object that *is* the reference (an alias,
a ``functools.partial``, a subclass), fails the check with a message that the exercise asks for the student's own
code. Only when everything holds does it display a result record carrying the grader's nonce; the grader also
requires the cell's ``execute_reply`` status to be ``ok``.
"""
from __future__ import annotations

import ast
import builtins
import functools
import math
import os
import resource
import sys
import sysconfig
import threading
import types

import course

RESULT_MIME = "application/vnd.course.grade+json"
CHECK_FILENAME = "<grader-check>"

_STATE: dict = {}
_MISSING = object()
_WATCHED_THIRD_PARTY = ("torch", "torch.nn.functional", "torch.linalg", "torch.fft", "numpy", "numpy.linalg",
                        "scipy.linalg", "math", "builtins", "functools", "importlib")


class GradingTampered(Exception):
    """Student code changed the grading machinery; the check is not trusted."""

    def __init__(self, changes):
        self.changes = list(changes)
        super().__init__("; ".join(self.changes[:5]))

    def _render_traceback_(self):
        lines = ["✘ the grader does not trust this check: student code changed the grading machinery"]
        lines += [f"  {change}" for change in self.changes[:10]]
        if len(self.changes) > 10:
            lines.append(f"  ... and {len(self.changes) - 10} more")
        return lines


# --------------------------------------------------------------------------- fingerprints

def _tracked(value) -> bool:
    return isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodDescriptorType,
                              types.WrapperDescriptorType, types.ModuleType, type, staticmethod, classmethod,
                              property, functools.partial))


def _function_print(fn):
    return (fn.__code__, fn.__defaults__, fn.__kwdefaults__, fn.__globals__ is not None and id(fn.__globals__))


def _snapshot() -> tuple[dict, dict]:
    """{(where, name): (object, function fingerprint or None)} for the machinery a check relies on, and the
    classes whose bodies it fingerprints."""
    snap = {}
    classes = {}
    for mod_name in sorted(sys.modules):
        mod = sys.modules[mod_name]
        ours = mod_name == "course" or mod_name.startswith("course.")
        if not (ours or mod_name in _WATCHED_THIRD_PARTY) or mod is None:
            continue
        for name, value in list(vars(mod).items()):
            if not _tracked(value):
                continue
            snap[(mod_name, name)] = (value, _function_print(value) if isinstance(value, types.FunctionType) else None)
            if isinstance(value, type) and (ours and getattr(value, "__module__", "").startswith("course")):
                classes[f"{value.__module__}.{value.__qualname__}"] = value
    torch = sys.modules.get("torch")
    if torch is not None:
        classes["torch.Tensor"] = torch.Tensor
        classes["torch.nn.Module"] = torch.nn.Module
    for cls_name, cls in classes.items():
        for name, value in list(vars(cls).items()):
            if _tracked(value):
                snap[(cls_name, name, "class")] = (
                    value, _function_print(value) if isinstance(value, types.FunctionType) else None)
    return snap, classes


def _lookup(key):
    if len(key) == 3:
        cls = _STATE["classes"].get(key[0])
        return vars(cls).get(key[1], _MISSING) if cls is not None else _MISSING
    mod = sys.modules.get(key[0])
    return vars(mod).get(key[1], _MISSING) if mod is not None else _MISSING


def changes() -> list[str]:
    """What differs from the fingerprints taken before any student code ran."""
    found = []
    for key, (value, printed) in _STATE["snapshot"].items():
        now = _lookup(key)
        where = f"{key[0]}.{key[1]}"
        if now is _MISSING:
            found.append(f"{where} was deleted")
        elif now is not value:
            found.append(f"{where} was replaced")
        elif printed is not None and _function_print(value) != printed:
            found.append(f"{where} was patched (its code, defaults or globals changed)")
    for mod_name in _STATE["modules"]:
        if sys.modules.get(mod_name) is not _STATE["modules"][mod_name]:
            found.append(f"sys.modules[{mod_name!r}] was replaced")
    return found


# --------------------------------------------------------------------------- install

def _trusted_prefixes() -> tuple[str, ...]:
    paths = {os.path.dirname(os.path.abspath(course.__file__)) + os.sep}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            paths.add(os.path.abspath(path) + os.sep)
    for path in sys.path:  # the environment's own packages (site-packages, dist-packages)
        if path.endswith(("site-packages", "dist-packages")):
            paths.add(os.path.abspath(path) + os.sep)
    return tuple(sorted(paths))


class _PlainFailure(Exception):
    def __init__(self, exercise, message):
        super().__init__(f"{exercise}: {message}")


def limit_memory(memory_limit_bytes: int | None) -> None:
    """An address-space limit for this kernel: a memory blow-up then fails one check instead of the machine."""
    if memory_limit_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))


def install(memory_limit_bytes: int | None = None) -> None:
    """Fingerprint what is loaded, for a check that calls no course checker (e.g. a plain assert).

    It imports neither the checkers nor torch; a check that calls a checker starts with
    ``course.grading.checks.install`` instead, which registers them and then calls :func:`install_state`.
    """
    limit_memory(memory_limit_bytes)
    install_state(checkers={}, ExerciseFailed=_PlainFailure, call_student_code=None)


def install_state(checkers: dict, ExerciseFailed, call_student_code, **extra) -> None:
    """Record the checkers (name -> (checker, references, reference code objects)) and fingerprint everything."""
    _STATE.clear()
    _STATE.update(
        checkers=checkers, ExerciseFailed=ExerciseFailed, trusted=_trusted_prefixes(),
        call_student_code=call_student_code, setprofile=sys.setprofile, getprofile=sys.getprofile,
        profile_funcs={sys.setprofile, sys.settrace, threading.setprofile, threading.settrace},
        modules={name: sys.modules[name] for name in sys.modules if name == "course" or name.startswith("course.")},
        **extra)
    _STATE["snapshot"], _STATE["classes"] = _snapshot()


def code_objects(obj) -> list:
    """The code objects that running obj executes first: a function's own, or every function in a class body."""
    if isinstance(obj, type):
        codes = []
        for value in vars(obj).values():
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            elif isinstance(value, property):
                codes += [f.__code__ for f in (value.fget, value.fset, value.fdel) if f is not None]
                continue
            if hasattr(value, "__code__"):
                codes.append(value.__code__)
        return codes
    obj = getattr(obj, "__wrapped__", obj)
    return [obj.__code__] if hasattr(obj, "__code__") else []


def qualified_name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


# --------------------------------------------------------------------------- the watch

def _is_student(code) -> bool:
    filename = code.co_filename
    if filename.startswith(("<frozen", CHECK_FILENAME)):
        return False
    return not filename.startswith(_STATE["trusted"])


class _Watch:
    """A sys.setprofile hook: records calls of reference code made by student code, and profiler tampering."""

    def __init__(self, ref_codes: dict):
        self.ref_codes = ref_codes
        self.profile_funcs = _STATE["profile_funcs"]
        self.call_student_code = _STATE["call_student_code"]
        self.hits: list[str] = []
        self.tampered: list[str] = []

    def _student_on_stack(self, frame) -> bool:
        """Whether student code sits between the running check (a <grader-check> frame) and frame."""
        student, f = False, frame
        while f is not None:
            code = f.f_code
            if code.co_filename.startswith(CHECK_FILENAME):
                return student
            student = student or _is_student(code)
            f = f.f_back
        return False

    def __call__(self, frame, event, arg):
        if event == "call":
            name = self.ref_codes.get(frame.f_code)
            if name is not None:
                caller = frame.f_back
                direct = caller is not None and (caller.f_code is self.call_student_code
                                                 or caller.f_code.co_filename.startswith(CHECK_FILENAME))
                if (direct or self._student_on_stack(frame.f_back)) and name not in self.hits:
                    self.hits.append(name)
        elif event == "c_call" and arg in self.profile_funcs:
            if self._student_on_stack(frame):
                self.tampered.append(f"student code called {getattr(arg, '__module__', '')}.{arg.__name__} "
                                     f"while the check ran")


def _checker_names(source: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id in _STATE["checkers"]:
            names.append(node.id)
        elif isinstance(node, ast.alias) and node.name in _STATE["checkers"]:
            names.append(node.name)
    return list(dict.fromkeys(names))


def _student_arguments(source: str, namespace: dict) -> list:
    """The objects the check passes to its checkers: check_x(name) -> namespace[name]."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _STATE["checkers"]:
            for arg in node.args:
                if isinstance(arg, ast.Name) and arg.id in namespace:
                    found.append(namespace[arg.id])
    return found


def _is_alias_of(obj, refs) -> str | None:
    """The reference obj stands for, if it is one (an alias, a partial, a bound or wrapped one, a subclass)."""
    seen = 0
    while seen < 10:
        seen += 1
        for ref in refs:
            if obj is ref or (isinstance(obj, type) and isinstance(ref, type) and issubclass(obj, ref)):
                return qualified_name(ref)
            code = getattr(obj, "__code__", None)
            if code is not None and code in code_objects(ref):
                return qualified_name(ref)
        if isinstance(obj, functools.partial):
            obj = obj.func
        elif hasattr(obj, "__func__"):
            obj = obj.__func__
        elif hasattr(obj, "__wrapped__"):
            obj = obj.__wrapped__
        else:
            return None
    return None


def _own_code_message(exercise_names, refs_used) -> str:
    refs = ", ".join(refs_used)
    return (f"this exercise asks for your own code, but your answer calls {refs}, the package's reference "
            f"implementation of the same exercise. Write the computation yourself; calling other package "
            f"functions (plots, data sets, other topics) is fine.")


def run_check(nonce: str, grade_id: str, source: str) -> None:
    """Run the instructor's check source in the user namespace; display the signed result only if it is trusted."""
    from IPython import get_ipython
    from IPython.display import display

    if not _STATE:
        raise RuntimeError("the grading guard was not installed in this kernel")
    found = changes()
    if found:
        raise GradingTampered(found)
    namespace = get_ipython().user_ns
    names = _checker_names(source)
    refs, ref_codes = [], {}
    for name in names:
        _, checker_refs, codes = _STATE["checkers"][name]
        refs += checker_refs
        ref_codes.update(codes)
    ExerciseFailed = _STATE["ExerciseFailed"]
    exercise = grade_id[len("check_"):] if grade_id.startswith("check_") else grade_id
    for obj in _student_arguments(source, namespace):
        alias = _is_alias_of(obj, refs)
        if alias:
            raise ExerciseFailed(exercise, _own_code_message(names, [alias]))
    code = compile(source, f"{CHECK_FILENAME}:{grade_id}", "exec")
    watch = _Watch(ref_codes)
    previous = _STATE["getprofile"]()
    failure = None
    _STATE["setprofile"](watch)
    threading.setprofile(watch)
    try:
        exec(code, namespace)
    except BaseException as err:  # noqa: BLE001 - judged below, after the machinery is checked
        failure = err
    finally:
        still_ours = _STATE["getprofile"]() is watch
        _STATE["setprofile"](previous)
        threading.setprofile(None)
    if not still_ours:
        watch.tampered.append("the grader's call watch was removed while the check ran")
    found = changes() + watch.tampered
    if found:
        raise GradingTampered(found) from None
    if watch.hits:
        raise ExerciseFailed(exercise, _own_code_message(names, watch.hits)) from None
    if failure is not None:
        raise failure
    display({RESULT_MIME: {"nonce": nonce, "grade_id": grade_id, "passed": True}}, raw=True)


def bootstrap_source(memory_limit_bytes: int | None, checkers: bool = True) -> str:
    """The first cell the grader runs in every kernel: the checkers' installer, or the plain one."""
    module = "course.grading.checks" if checkers else "course.grading.guard"
    return (f"import {module} as _course_grading_guard\n"
            f"_course_grading_guard.install({memory_limit_bytes!r})\n"
            "del _course_grading_guard\n")


def check_source(nonce: str, grade_id: str, source: str) -> str:
    """The cell the grader runs in place of an instructor check cell."""
    return ("import course.grading.guard as _course_grading_guard\n"
            f"_course_grading_guard.run_check({nonce!r}, {grade_id!r}, {source!r})\n")


_ = (builtins, math)  # fingerprinted through sys.modules
