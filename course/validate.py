"""Argument checks that fail early with a message a student can act on.

Every public function of the package validates its inputs with these, so a bad
call raises a ``ValueError`` that names the argument and what was expected,
instead of an error from deep inside torch.
"""
from __future__ import annotations

import torch


def as_tensor(name: str, value, *, dtype=None) -> torch.Tensor:
    """Return ``value`` as a tensor, or raise naming ``name``."""
    if isinstance(value, torch.Tensor):
        return value if dtype is None else value.to(dtype)
    try:
        return torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a tensor or array-like, got {type(value).__name__}") from err


def floating(name: str, x) -> torch.Tensor:
    """A floating-point tensor (float16/32/64); integers are not silently cast."""
    x = as_tensor(name, x)
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; "
                         f"convert it with {name}.float()")
    return x


def timesteps(name: str, t, T: int, batch: int | None = None) -> torch.Tensor:
    """Integer timesteps in [0, T), as a 1-D long tensor of length ``batch``.

    A Python int or a 0-d tensor is broadcast to the batch.
    """
    t = as_tensor(name, t)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer timesteps in [0, {T}), got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.reshape(1)
    t = t.long()
    if t.dim() != 1:
        raise ValueError(f"{name} must be an int or a 1-D tensor of timesteps, got shape {tuple(t.shape)}")
    if batch is not None:
        if t.numel() == 1:
            t = t.expand(batch)
        elif t.numel() != batch:
            raise ValueError(f"{name} has {t.numel()} timesteps but the batch has {batch} samples; "
                             f"give one timestep per sample, or a single int")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= T):
        bad = t[(t < 0) | (t >= T)][0].item()
        raise ValueError(f"{name} must lie in [0, {T}) (T = {T}), got {bad}")
    return t


def same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def broadcast_to_batch(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample values of shape (B,) so they broadcast against x of shape (B, ...).

    The values keep their own dtype (the schedules are float64); cast the finished
    coefficient to x's dtype, so that 1 - alpha_bar is never formed in float32.
    """
    return values.to(device=x.device).reshape(-1, *([1] * (x.dim() - 1)))
