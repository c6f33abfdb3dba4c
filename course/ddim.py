"""DDIM (Song et al. 2021): the step for any eta, timestep spacings, sampling from a given x_T, inversion, slerp (notebook 04)."""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from . import forward, validate
from .schedules import NoiseSchedule

SPACINGS = ("trailing", "leading", "linspace")


def ddim_timesteps(steps: int, T: int = 1000, spacing: str = "trailing") -> list[int]:
    """The sub-sequence tau of DDIM sampling, from high t to low, as diffusers' ``timestep_spacing`` builds it.

    "trailing" starts at T-1 (pure noise, like Algorithm 2); "leading" (diffusers' DDIMScheduler default)
    starts at T - T/steps and ends at 0; "linspace" spans 0..T-1 evenly.
    """
    steps = validate.positive_int("steps", steps)
    if steps > T:
        raise ValueError(f"steps must be at most T = {T}, got {steps}")
    if spacing == "trailing":
        taus = [round(T - i * T / steps) - 1 for i in range(steps)]
    elif spacing == "leading":
        taus = [i * (T // steps) for i in range(steps)][::-1]
    elif spacing == "linspace":
        taus = [round(v) for v in torch.linspace(0, T - 1, steps, dtype=torch.float64).tolist()][::-1]
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return taus


def ddim_sigma(schedule: NoiseSchedule, t: int, t_prev: int, eta: float) -> torch.Tensor:
    """sigma_t(eta) = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev) (DDIM Eq. 16)."""
    alpha_bar_t = schedule.alpha_bar[t]
    alpha_bar_prev = schedule.alpha_bar[t_prev] if t_prev >= 0 else torch.ones((), dtype=torch.float64)
    return eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev))


def ddim_step(schedule: NoiseSchedule, eps: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int,
              eta: float = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM update x_t -> x_{t_prev} (DDIM Eq. 12); t_prev = -1 means alpha_bar_prev = 1 (the last step).

    x_prev = sqrt(alpha_bar_prev) x0_pred + sqrt(1 - alpha_bar_prev - sigma_t^2) eps + sigma_t z,
    with x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t). eta = 0 is deterministic;
    eta = 1 with t_prev = t - 1 is DDPM's ancestral step. Equals diffusers' DDIMScheduler.step with
    clip_sample=False, set_alpha_to_one=True, when its previous timestep is t_prev.
    """
    x_t = validate.floating("x_t", x_t)
    eps = validate.floating("eps", eps)
    validate.same_shape("x_t", x_t, "eps", eps)
    t = int(validate.timesteps("t", t, schedule.T)[0])
    t_prev = int(t_prev)
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev must satisfy -1 <= t_prev < t = {t}, got {t_prev}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    alpha_bar_t = schedule.alpha_bar[t]
    alpha_bar_prev = schedule.alpha_bar[t_prev] if t_prev >= 0 else torch.ones((), dtype=torch.float64)
    sigma = ddim_sigma(schedule, t, t_prev, eta)
    x0_pred = (x_t - torch.sqrt(1 - alpha_bar_t).to(x_t.dtype) * eps) / torch.sqrt(alpha_bar_t).to(x_t.dtype)
    direction = torch.sqrt((1 - alpha_bar_prev - sigma ** 2).clamp(min=0)).to(x_t.dtype) * eps
    x_prev = torch.sqrt(alpha_bar_prev).to(x_t.dtype) * x0_pred + direction
    if eta == 0:
        return x_prev
    if noise is None:
        noise = torch.randn_like(x_t)
    validate.same_shape("x_t", x_t, "noise", noise)
    return x_prev + sigma.to(x_t.dtype) * noise


def initial_noise(shape: tuple, gen: torch.Generator, x_T: torch.Tensor | None) -> torch.Tensor:
    """x_T for a sampler: the given one (checked against ``shape``, copied), else seeded N(0, I)."""
    if x_T is None:
        return torch.randn(shape, generator=gen)
    x_T = validate.floating("x_T", x_T)
    if tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape is {tuple(shape)}")
    return x_T.clone()


@torch.no_grad()
def ddim_sample(eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: NoiseSchedule,
                shape: tuple, steps: int = 50, eta: float = 0.0, seed: int = 0, x_T: torch.Tensor | None = None,
                keep: tuple = (), spacing: str = "trailing", progress: bool = True):
    """DDIM sampling on the sub-sequence ``ddim_timesteps(steps)`` with a model trained for DDPM: no retraining.

    Start from ``x_T`` when given (the same noise at any number of steps), else from seeded N(0, I).
    Returns (x_0, frames) like ``ddpm_sample``; ``keep`` may name timesteps of the sub-sequence, or be
    "all" for every one of them.
    """
    taus = ddim_timesteps(steps, schedule.T, spacing)
    gen = torch.Generator().manual_seed(seed)
    x = initial_noise(shape, gen, x_T)
    keep = set(taus) if keep == "all" else set(keep)
    frames = {}
    for t, t_prev in tqdm(list(zip(taus, taus[1:] + [-1])), desc=f"DDIM {steps} steps, eta={eta:g}",
                          disable=not progress, leave=False):
        t_batch = torch.full((shape[0],), t, dtype=torch.long)
        eps = eps_model(x, t_batch)
        if t in keep:
            x0_pred = forward.predict_x0_from_eps(schedule, x, t_batch, eps)
            frames[t] = (x.clone(), x0_pred.clamp(-1, 1) if len(shape) == 4 else x0_pred)
        x = ddim_step(schedule, eps, x, t, t_prev, eta, noise=torch.randn(shape, generator=gen))
    return x, frames


@torch.no_grad()
def ddim_invert(eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: NoiseSchedule,
                x_0: torch.Tensor, steps: int = 50, spacing: str = "trailing", progress: bool = True) -> torch.Tensor:
    """DDIM inversion: run the eta = 0 update upwards, x_0 -> x_{tau_1} -> ... -> x_{T-1}.

    Each step uses eps_theta at the current (lower) timestep as an estimate of eps at the next one;
    that approximation is where the reconstruction error comes from, and it shrinks with more steps.
    """
    x = validate.floating("x_0", x_0).clone()
    taus = ddim_timesteps(steps, schedule.T, spacing)[::-1]  # low t to high t
    for t_from, t_to in tqdm(list(zip([-1] + taus[:-1], taus)), desc=f"DDIM inversion, {steps} steps",
                             disable=not progress, leave=False):
        t_eval = max(t_from, 0)
        eps = eps_model(x, torch.full((x.shape[0],), t_eval, dtype=torch.long))
        alpha_bar_from = schedule.alpha_bar[t_from] if t_from >= 0 else torch.ones((), dtype=torch.float64)
        x0_pred = (x - torch.sqrt(1 - alpha_bar_from).to(x.dtype) * eps) / torch.sqrt(alpha_bar_from).to(x.dtype)
        alpha_bar_to = schedule.alpha_bar[t_to]
        x = torch.sqrt(alpha_bar_to).to(x.dtype) * x0_pred + torch.sqrt(1 - alpha_bar_to).to(x.dtype) * eps
    return x


def slerp(z_0: torch.Tensor, z_1: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation between two noises: keeps the norm a Gaussian sample has (a straight line shrinks it)."""
    z_0, z_1 = validate.floating("z_0", z_0), validate.floating("z_1", z_1)
    validate.same_shape("z_0", z_0, "z_1", z_1)
    a, b = z_0.flatten(), z_1.flatten()
    omega = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1))
    if omega.abs() < 1e-6:
        return (1 - weight) * z_0 + weight * z_1
    return (torch.sin((1 - weight) * omega) * z_0 + torch.sin(weight * omega) * z_1) / torch.sin(omega)


@torch.no_grad()
def sample_in_batches(eps_model_for: Callable, labels: torch.Tensor, schedule: NoiseSchedule, steps: int,
                      eta: float = 0.0, seed: int = 0, x_T: torch.Tensor | None = None,
                      image_shape: tuple = (1, 16, 16), batch_size: int = 250, progress: bool = False) -> torch.Tensor:
    """DDIM samples for ``labels`` from one fixed x_T, in batches, clamped to [-1, 1].

    ``eps_model_for(batch_labels)`` returns the eps-model of one batch (CFG, PAG, an adapted UNet, ...).
    x_T is drawn from ``seed`` for all labels at once, so a sample does not depend on ``batch_size``; batch i
    uses seed + its first index for eta > 0.
    """
    labels = validate.as_tensor("labels", labels).long()
    if x_T is None:
        x_T = torch.randn((len(labels), *image_shape), generator=torch.Generator().manual_seed(seed))
    out = []
    starts = range(0, len(labels), batch_size)
    one_batch = len(starts) < 2  # the progress bar: DDIM's steps for one batch, else the batches
    for start in tqdm(starts, desc=f"sampling {len(labels)}", disable=not progress or one_batch, leave=False):
        part = slice(start, start + batch_size)
        x, _ = ddim_sample(eps_model_for(labels[part]), schedule, tuple(x_T[part].shape), steps=steps, eta=eta,
                           seed=seed + start, x_T=x_T[part], progress=progress and one_batch)
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


def diffusers_scheduler(steps: int, spacing: str = "trailing", alpha_bar: torch.Tensor | None = None):
    """diffusers' DDIMScheduler with the textbook's choices (no clipping, alpha_bar_prev = 1 at the end, the given
    spacing), its alpha_bar in float64 (its own betas' cumulative product, or ``alpha_bar``), so that it can be
    compared with ``ddim_step``."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                              timestep_spacing=spacing, set_alpha_to_one=True)
    scheduler.alphas_cumprod = torch.cumprod(1 - scheduler.betas.double(), 0) if alpha_bar is None else alpha_bar.clone()
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    scheduler.set_timesteps(steps)
    return scheduler
