"""Noise schedules: beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s, SNR(t).

Timesteps are indexed t = 0, ..., T-1 as in diffusers: code index t is the
paper's step t+1, and x_0 always means the clean data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import validate


@dataclass(frozen=True)
class NoiseSchedule:
    """The per-timestep constants of a diffusion process, all float64 tensors of length T."""

    name: str
    betas: torch.Tensor

    def __post_init__(self):
        betas = torch.as_tensor(self.betas, dtype=torch.float64)
        if betas.dim() != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta_t must lie in (0, 1)")
        object.__setattr__(self, "betas", betas)

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alpha_bar(self) -> torch.Tensor:
        """alpha_bar_t = prod_{s<=t} alpha_s (DDPM eq. 4), in float64.

        float64 matters: 1 - alpha_bar_0 = beta_0 = 1e-4 keeps only 3-4 digits in float32.
        diffusers takes this product in float32, so its alpha_bar differs from ours by ~1e-6.
        """
        return torch.cumprod(self.alphas, dim=0)

    @property
    def alpha_bar_prev(self) -> torch.Tensor:
        """alpha_bar_{t-1}, with alpha_bar_{-1} = 1 (no noise before the first step)."""
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t)."""
        return self.alpha_bar / (1.0 - self.alpha_bar)

    def at(self, values: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        """Pick values[t] per sample and shape it to broadcast against x of shape (B, ...)."""
        t = validate.timesteps("t", t, self.T, batch=x.shape[0] if x.dim() else None)
        return validate.broadcast_to_batch(values[t], x)

    def __repr__(self) -> str:
        ab = self.alpha_bar
        return (f"NoiseSchedule({self.name!r}, T={self.T}, beta: {self.betas[0]:.2e} -> {self.betas[-1]:.2e}, "
                f"alpha_bar_(T-1) = {ab[-1]:.2e})")


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """DDPM's schedule (Ho et al. 2020, sec. 4): beta rises linearly from 1e-4 to 0.02 over T = 1000 steps."""
    validate.positive_int("T", T)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")
    # linspace in float32, as diffusers does, so both start from the same betas.
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    return NoiseSchedule("linear", betas)


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Nichol & Dhariwal 2021 (eq. 17): alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(((t/T + s) / (1 + s)) pi/2),
    and beta_t = 1 - alpha_bar(t + 1) / alpha_bar(t) capped at max_beta (the f(0) cancels in the ratio).

    Same as diffusers' ``beta_schedule="squaredcos_cap_v2"``.
    """
    validate.positive_int("T", T)

    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
    return NoiseSchedule("cosine", torch.tensor(betas, dtype=torch.float32))


def get_schedule(name: str = "linear", T: int = 1000) -> NoiseSchedule:
    """A schedule by name: ``"linear"`` or ``"cosine"``."""
    makers = {"linear": linear_schedule, "cosine": cosine_schedule}
    if name not in makers:
        raise ValueError(f"schedule name must be one of {sorted(makers)}, got {name!r}")
    return makers[name](T)
