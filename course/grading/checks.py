"""The grader's installer for a check that calls a course checker (runs first in that check's fresh kernel).

It imports the checkers, torch and the reference registry, maps every checker to the code objects of its
references, and hands them to :func:`course.grading.guard.install_state`, which fingerprints all of it before any
student code runs. Kept apart from :mod:`course.grading.guard` so that a plain check's kernel stays light.
"""
from __future__ import annotations

import course.exercises as exercises
from course.exercises.core import ExerciseFailed

from . import guard, references


def install(memory_limit_bytes: int | None = None) -> None:
    """Fingerprint the grading machinery; called once per kernel, before any student code."""
    guard.limit_memory(memory_limit_bytes)
    by_name = {}
    for checker, refs in references.registry().items():
        codes = {code: guard.qualified_name(ref) for ref in refs for code in guard.code_objects(ref)}
        by_name[checker.__name__] = (checker, list(refs), codes)
    guard.install_state(by_name, ExerciseFailed, exercises.core.call_student.__code__, exercises=exercises)
