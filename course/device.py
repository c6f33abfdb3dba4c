"""Device selection: the CPU unless a student asks for an accelerator."""
from __future__ import annotations

import os

import torch


def get_device(name: str | None = None) -> torch.device:
    """Return the torch device to use.

    ``name`` is ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``; when omitted, the
    ``COURSE_DEVICE`` environment variable decides, and it defaults to ``"cpu"``
    so every run gives the same numbers. ``"auto"`` picks cuda, then mps, then cpu.
    """
    name = (name or os.environ.get("COURSE_DEVICE") or "cpu").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; use 'cpu' or 'auto'")
        return torch.device("cuda")
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' was asked for but this machine has no Apple GPU; use 'cpu' or 'auto'")
        return torch.device("mps")
    raise ValueError(f"device must be one of 'cpu', 'cuda', 'mps', 'auto', got {name!r}")
