"""Checker for notebook 00's warm-up exercise: scaling pixels to the model's range [-1, 1]."""
from __future__ import annotations

import torch

from .core import ExerciseFailed, call_student, compare, passed


def reference_to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in {0, ..., 255} -> float32 in [-1, 1] (DDPM sec. 3.3)."""
    return pixels.float() / 127.5 - 1.0


def check_to_model_range(student_fn) -> None:
    name = "to_model_range"
    gen = torch.Generator().manual_seed(0)
    cases = [
        ("a random batch of shape (4, 3, 8, 8)", torch.randint(0, 256, (4, 3, 8, 8), generator=gen, dtype=torch.uint8)),
        ("the extremes 0 and 255", torch.tensor([[0, 255]], dtype=torch.uint8)),
        ("a batch of one grey image", torch.full((1, 1, 4, 4), 128, dtype=torch.uint8)),
    ]
    for case, pixels in cases:
        got = call_student(name, student_fn, case, pixels.clone())
        if isinstance(got, torch.Tensor) and not got.is_floating_point():
            raise ExerciseFailed(name, f"the result has dtype {got.dtype}; a model needs floats: "
                                       f"convert with .float() before dividing\nwhile checking: {case}")
        compare(name, "result", got, reference_to_model_range(pixels), case)
    passed(name, len(cases), "random batch, extremes 0 and 255, batch of one")
