"""Checkers for notebook 02: q_sample and the posterior q(x_{t-1} | x_t, x_0)."""
from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from .. import forward
from ..schedules import get_schedule
from .core import ExerciseFailed, call_student, compare, passed


def _cases(seed: int = 0):
    """(description, schedule, x_0, t) for random batches and the edge cases t = 0, t = T-1, batch of one."""
    gen = torch.Generator().manual_seed(seed)
    linear, cosine = get_schedule("linear"), get_schedule("cosine")
    T = linear.T
    cases = []
    for schedule in (linear, cosine):
        for shape in [(16, 2), (6, 1, 16, 16), (4, 3, 8, 8)]:
            t = torch.randint(0, T, (shape[0],), generator=gen)
            cases.append((f"{schedule.name} schedule, x_0 of shape {shape}, random t", schedule,
                          torch.randn(shape, generator=gen), t))
        cases.append((f"{schedule.name} schedule, t = 0 for every sample", schedule,
                      torch.randn(5, 2, generator=gen), torch.zeros(5, dtype=torch.long)))
        cases.append((f"{schedule.name} schedule, t = T-1 for every sample", schedule,
                      torch.randn(5, 2, generator=gen), torch.full((5,), T - 1)))
    cases.append(("batch of one, t = 500", linear, torch.randn(1, 1, 4, 4, generator=gen), torch.tensor([500])))
    cases.append(("float64 inputs", linear, torch.randn(8, 2, generator=gen, dtype=torch.float64),
                  torch.randint(0, T, (8,), generator=gen)))
    return cases


def check_q_sample(student_q_sample) -> None:
    """Check ``q_sample(x_0, t, eps, alpha_bar)`` against the reference and diffusers' add_noise."""
    name = "q_sample"
    cases = _cases()
    for case, schedule, x_0, t in cases:
        eps = torch.randn_like(x_0)
        alpha_bar = schedule.alpha_bar
        got = call_student(name, student_q_sample, case, x_0.clone(), t.clone(), eps.clone(), alpha_bar.clone())
        compare(name, name, got, forward.q_sample(schedule, x_0, t, eps), case, t=t)
    # The same numbers as the library students go on to use.
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    x_0, t = torch.randn(8, 1, 16, 16), torch.arange(0, 1000, 125)
    eps = torch.randn_like(x_0)
    got = call_student(name, student_q_sample, "diffusers comparison", x_0, t, eps, get_schedule("linear").alpha_bar)
    compare(name, name, got, scheduler.add_noise(x_0, eps, t), "against diffusers' DDPMScheduler.add_noise", t=t)
    passed(name, len(cases) + 1, "random batches, t = 0, t = T-1, batch of one, float64, diffusers' add_noise")


def _diffusers_posterior_mean(scheduler: DDPMScheduler, x_0, x_t, t: int):
    """mu_tilde from DDPMScheduler.step: with prediction_type='sample' it returns mu_tilde + sigma z."""
    seed = 1234
    out = scheduler.step(x_0, t, x_t, generator=torch.Generator().manual_seed(seed)).prev_sample
    if t == 0:
        return out
    z = torch.randn(x_0.shape, generator=torch.Generator().manual_seed(seed), dtype=x_0.dtype)
    return out - scheduler._get_variance(t) ** 0.5 * z


def _compare_variance(name, variance, ref_var, schedule, t, case) -> None:
    """The variance is compared relatively: beta_tilde_t is 1e-4 to 2e-2, so an absolute tolerance would pass beta_t.

    Its dtype is free (the exercise fixes only its shape); it must be floating point.
    """
    if not variance.is_floating_point():
        raise ExerciseFailed(name, f"variance has dtype {variance.dtype}; it should be a floating-point tensor"
                                   f"\nwhile checking: {case}")
    tight = ref_var.dtype == torch.float64 and variance.dtype == torch.float64
    got = variance.detach().double()
    expected = ref_var.double()
    beta_t = schedule.betas[t].reshape(-1, *[1] * (got.dim() - 1)).expand_as(got)
    hint = ""
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-12) and \
            torch.allclose(got, beta_t, rtol=1e-4, atol=1e-12):
        hint = ("\nhint: that is sigma_t^2 = beta_t, the other choice of Ho et al.; the posterior's variance is "
                "beta_tilde_t = (1 - alpha_bar_(t-1)) / (1 - alpha_bar_t) beta_t")
    compare(name, "variance", got, expected, case + hint, t=t, atol=1e-12 if tight else 1e-10,
            rtol=1e-7 if tight else 1e-4)


def check_q_posterior(student_q_posterior) -> None:
    """Check ``q_posterior(x_0, x_t, t, betas) -> (mean, variance)`` against the reference and diffusers."""
    name = "q_posterior"
    cases = _cases(seed=1)
    for case, schedule, x_0, t in cases:
        x_t = forward.q_sample(schedule, x_0, t, torch.randn_like(x_0))
        betas = schedule.betas
        result = call_student(name, student_q_posterior, case, x_0.clone(), x_t.clone(), t.clone(), betas.clone())
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ExerciseFailed(name, f"return a tuple (mean, variance), got {type(result).__name__}\n"
                                       f"while checking: {case}")
        mean, variance = result
        ref_mean, ref_var = forward.q_posterior(schedule, x_0, x_t, t)
        compare(name, "mean", mean, ref_mean, case, t=t)
        if not isinstance(variance, torch.Tensor):
            raise ExerciseFailed(name, f"variance should be a torch.Tensor, got {type(variance).__name__}")
        try:
            variance = variance.expand_as(x_t) if variance.dim() == x_t.dim() else \
                variance.reshape(-1, *[1] * (x_t.dim() - 1)).expand_as(x_t)
        except RuntimeError:
            raise ExerciseFailed(name, f"variance has shape {tuple(variance.shape)}; give one value per sample, "
                                       f"shape ({len(t)},) or {(len(t),) + (1,) * (x_t.dim() - 1)}\n"
                                       f"while checking: {case}") from None
        _compare_variance(name, variance, ref_var.expand_as(x_t), schedule, t, case)
    scheduler = DDPMScheduler(beta_schedule="linear", prediction_type="sample", clip_sample=False)
    betas = get_schedule("linear").betas
    # diffusers forms 1 - alpha_bar_t in float32, which loses digits for t below ~50, so compare above that.
    for t_int in (100, 500, 999):
        x_0 = torch.randn(2, 1, 8, 8)
        x_t = torch.randn(2, 1, 8, 8)
        t = torch.full((2,), t_int)
        mean, _ = call_student(name, student_q_posterior, f"diffusers comparison at t = {t_int}", x_0, x_t, t, betas)
        compare(name, "mean", mean, _diffusers_posterior_mean(scheduler, x_0, x_t, t_int),
                f"against diffusers' DDPMScheduler.step at t = {t_int}", t=t)
    passed(name, len(cases) + 3, "random batches, t = 0, t = T-1, batch of one, float64, diffusers' step")
