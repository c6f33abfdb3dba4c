"""Ancestral sampling (DDPM Algorithm 2)."""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from . import forward, validate
from .schedules import NoiseSchedule


def ddpm_step(schedule: NoiseSchedule, eps: torch.Tensor, x_t: torch.Tensor, t: int,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """One reverse step x_t -> x_{t-1} (DDPM Algorithm 2, line 4), with sigma_t^2 = beta_tilde_t.

    x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) + sigma_t z, and no noise at t = 0.
    Equals diffusers' DDPMScheduler.step with clip_sample=False and variance_type="fixed_small".
    """
    x_t = validate.floating("x_t", x_t)
    eps = validate.floating("eps", eps)
    validate.same_shape("x_t", x_t, "eps", eps)
    t = int(validate.timesteps("t", t, schedule.T)[0])
    beta_t, alpha_t, alpha_bar_t = schedule.betas[t], schedule.alphas[t], schedule.alpha_bar[t]
    mean = (x_t - (beta_t / torch.sqrt(1 - alpha_bar_t)).to(x_t.dtype) * eps) / torch.sqrt(alpha_t).to(x_t.dtype)
    if t == 0:
        return mean
    if noise is None:
        noise = torch.randn_like(x_t)
    validate.same_shape("x_t", x_t, "noise", noise)
    sigma_t = torch.sqrt((1 - schedule.alpha_bar_prev[t]) / (1 - alpha_bar_t) * beta_t)
    return mean + sigma_t.to(x_t.dtype) * noise


@torch.no_grad()
def ddpm_sample(eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: NoiseSchedule,
                shape: tuple, seed: int = 0, keep: tuple = (), progress: bool = True):
    """Run Algorithm 2 from x_{T-1} ~ N(0, I) down to x_0.

    ``eps_model(x_t, t)`` gets a (B,) long tensor of timesteps. Returns (x_0, frames) where ``frames``
    maps each timestep in ``keep`` to (x_t, predicted x_0) for trajectory scrubbers; for images
    (B, C, H, W) the predicted x_0 is clipped to the data range [-1, 1], for points it is not.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    frames = {}
    for t in tqdm(range(schedule.T - 1, -1, -1), desc="DDPM sampling", disable=not progress, leave=False):
        t_batch = torch.full((shape[0],), t, dtype=torch.long)
        eps = eps_model(x, t_batch)
        if t in keep:
            x0_pred = forward.predict_x0_from_eps(schedule, x, t_batch, eps)
            frames[t] = (x.clone(), x0_pred.clamp(-1, 1) if len(shape) == 4 else x0_pred)
        x = ddpm_step(schedule, eps, x, t, noise=torch.randn(shape, generator=gen))
    return x, frames
