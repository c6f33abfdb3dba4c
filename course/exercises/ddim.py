"""Checker for notebook 04: the DDIM step for any eta (DDIM Eq. 12 with sigma_t(eta) of Eq. 16)."""
from __future__ import annotations

import torch

from .. import ddim
from ..schedules import get_schedule
from .core import ExerciseFailed, call_student, compare, passed


def _cases(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for t, t_prev in [(999, 899), (500, 480), (100, 99), (20, 0), (9, -1), (999, -1)]:
        for eta in (0.0, 0.5, 1.0):
            shape = (8, 2) if eta == 0.5 else (3, 1, 8, 8)
            cases.append((f"t = {t}, t_prev = {t_prev}, eta = {eta}, x_t of shape {shape}", t, t_prev, eta,
                          torch.randn(shape, generator=gen), torch.randn(shape, generator=gen),
                          torch.randn(shape, generator=gen)))
    return cases


def _hint(got, schedule, eps, x_t, t, t_prev, eta, noise) -> str:
    if not isinstance(got, torch.Tensor) or got.shape != x_t.shape:
        return ""
    deterministic = ddim.ddim_step(schedule, eps, x_t, t, t_prev, eta, noise=torch.zeros_like(noise))
    if eta > 0 and (torch.allclose(got, deterministic, atol=1e-5) or
                    torch.allclose(got, ddim.ddim_step(schedule, eps, x_t, t, t_prev, 0.0), atol=1e-5)):
        return "\nhint: with eta > 0 add sigma_t * noise, and take sigma_t^2 out of the direction term"
    no_sigma_in_direction = ddim.ddim_step(schedule, eps, x_t, t, t_prev, 0.0) + \
        ddim.ddim_sigma(schedule, t, t_prev, eta).float() * noise
    if eta > 0 and torch.allclose(got, no_sigma_in_direction, atol=1e-5):
        return "\nhint: the direction pointing to x_t has weight sqrt(1 - alpha_bar_prev - sigma_t^2), not sqrt(1 - alpha_bar_prev)"
    if t_prev == -1:
        return "\nhint: t_prev = -1 is the last step: use alpha_bar_prev = 1 there (diffusers' set_alpha_to_one=True)"
    return ""


def check_ddim_step(student_ddim_step) -> None:
    """Check ``ddim_step(eps, x_t, t, t_prev, eta, noise, alpha_bar) -> x_{t_prev}`` against the reference and diffusers."""
    name = "ddim_step"
    schedule = get_schedule("linear")
    cases = _cases()
    for case, t, t_prev, eta, x_t, eps, noise in cases:
        got = call_student(name, student_ddim_step, case, eps.clone(), x_t.clone(), t, t_prev, eta, noise.clone(),
                           schedule.alpha_bar.clone())
        expected = ddim.ddim_step(schedule, eps, x_t, t, t_prev, eta, noise=noise)
        hint = _hint(got, schedule, eps, x_t, t, t_prev, eta, noise)
        compare(name, "x_{t_prev}", got, expected, case + hint, atol=1e-5, rtol=1e-5)
    checked = len(cases)
    for steps in (10, 50):
        scheduler = ddim.diffusers_scheduler(steps)
        taus = scheduler.timesteps.tolist()
        for t in taus[:2] + taus[-2:]:
            t_prev = t - 1000 // steps
            x_t, eps, noise = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
            for eta in (0.0, 1.0):
                theirs = scheduler.step(eps, t, x_t, eta=eta, variance_noise=noise).prev_sample
                got = call_student(name, student_ddim_step, f"diffusers comparison, {steps} steps, t = {t}",
                                   eps, x_t, t, max(t_prev, -1), eta, noise, schedule.alpha_bar.clone())
                compare(name, "x_{t_prev}", got, theirs.float(),
                        f"against diffusers' DDIMScheduler.step(clip_sample=False) at t = {t}, eta = {eta}, "
                        f"{steps} steps", atol=1e-5, rtol=1e-5)
                checked += 1
    passed(name, checked, "eta = 0, 0.5, 1, the last step (t_prev = -1), 2D and image shapes, "
                          "diffusers' DDIMScheduler.step")
