"""Checkers for notebook 05: the reverse-SDE Euler-Maruyama step and the Langevin corrector step (VP SDE); the
probability-flow ODE drift's checker stays for the earlier version of the exercise.

Song et al. 2021: reverse-time SDE (eq. 6), VP SDE (eq. 11), probability-flow ODE (eq. 13), corrector (Algorithm 5).
"""
from __future__ import annotations

import math

import torch

from .. import sde
from .core import ExerciseFailed, call_student, compare, passed

_VP = sde.VPSDE()


def _cases(seed: int = 0, with_ds: bool = True):
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for s, ds in [(1.0, 0.1), (0.5, 0.01), (0.05, 0.001), (0.002, 0.001), (0.8, 0.5)]:
        for shape, dtype in [((16, 2), torch.float32), ((3, 1, 8, 8), torch.float64)]:
            case = f"s = {s}" + (f", ds = {ds}" if with_ds else "") + f", x of shape {shape}, {dtype}"
            cases.append((case, s, ds, torch.randn(shape, generator=gen, dtype=dtype),
                          torch.randn(shape, generator=gen, dtype=dtype) * 3,
                          torch.randn(shape, generator=gen, dtype=dtype)))
    return cases


def _close(got, expected) -> bool:
    return isinstance(got, torch.Tensor) and got.shape == expected.shape and \
        torch.allclose(got.double(), expected.double(), atol=1e-5, rtol=1e-5)


def _em_hint(got, x, score, beta, ds, noise) -> str:
    """Recognise the usual mistakes by recomputing them."""
    drift = 0.5 * beta * x + beta * score  # minus the reverse-SDE drift: what the step adds per unit ds
    noise_term = math.sqrt(beta * ds) * noise
    wrong = [
        (x + drift * ds, "no noise: the reverse SDE adds g(s) sqrt(ds) z = sqrt(beta ds) z at every step"),
        (x + drift * ds + beta * ds * noise, "the noise is scaled by g^2 ds; a Brownian increment has std "
                                             "sqrt(ds): use sqrt(beta ds) z"),
        (x + drift * ds + math.sqrt(beta) * ds * noise, "the noise is scaled by g ds; a Brownian increment "
                                                        "has std sqrt(ds): use sqrt(beta) sqrt(ds) z"),
        (x + drift * ds + math.sqrt(beta) * noise, "the noise is scaled by g = sqrt(beta) alone: the Brownian "
                                                   "increment over a step ds has std sqrt(ds), so the noise term "
                                                   "is g sqrt(ds) z = sqrt(beta ds) z"),
        (x + drift * ds + ds * noise, "the noise is scaled by ds alone: it is g sqrt(ds) z = sqrt(beta ds) z"),
        (x + drift * ds + math.sqrt(ds) * noise, "the noise is missing the diffusion g = sqrt(beta): use "
                                                 "sqrt(beta ds) z, not sqrt(ds) z"),
        (x + (0.5 * beta * x + 0.5 * beta * score) * ds + noise_term,
         "the score has weight 1/2 beta: that is the probability-flow ODE; the reverse SDE has g^2 = beta"),
        (x + (-0.5 * beta * x - beta * score) * ds + noise_term,
         "the drift has the wrong sign: going down in s, x_(s-ds) = x_s - [f - g^2 score] ds, "
         "and -f = +1/2 beta x"),
        (x + (-0.5 * beta * x + beta * score) * ds + noise_term,
         "the term in x has the wrong sign: f(x, s) = -1/2 beta x, and the step subtracts f ds"),
        (x + (0.5 * beta * x - beta * score) * ds + noise_term,
         "the score term has the wrong sign: the step moves x along +beta score (towards higher density)"),
    ]
    for candidate, hint in wrong:
        if _close(got, candidate):
            return "\nhint: " + hint
    return ""


def check_reverse_em_step(student_reverse_em_step) -> None:
    """Check ``reverse_em_step(x, score, beta_s, ds, noise) -> x at s - ds`` (VP SDE, eq. 6 with eq. 11)."""
    name = "reverse_em_step"
    cases = _cases()
    for case, s, ds, x, score, noise in cases:
        beta = _VP.beta(s)
        got = call_student(name, student_reverse_em_step, case, x.clone(), score.clone(), beta, ds, noise.clone())
        expected = sde.em_step(_VP, x, s, ds, score, noise)
        compare(name, "x_(s - ds)", got, expected, case + _em_hint(got, x, score, beta, ds, noise))
    # diffusers' ScoreSdeVpScheduler.step_pred takes eps and draws its own noise from a generator
    from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler

    scheduler = ScoreSdeVpScheduler(beta_min=_VP.beta_min, beta_max=_VP.beta_max)
    scheduler.set_timesteps(50)
    for s in scheduler.timesteps[[0, 20, 49]].tolist():
        x, eps = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randn(2, 1, 8, 8, dtype=torch.float64)
        theirs, _ = scheduler.step_pred(eps, x, torch.tensor(s, dtype=torch.float64),
                                        generator=torch.Generator().manual_seed(1))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
        case = f"against diffusers' ScoreSdeVpScheduler.step_pred at s = {s:.3f}, ds = 1/50, same noise"
        got = call_student(name, student_reverse_em_step, case, x.clone(),
                           sde.score_from_eps(eps, _VP.marginal_std(s)), _VP.beta(s), 1 / 50, noise.clone())
        compare(name, "x_(s - ds)", got, theirs, case, atol=1e-7, rtol=1e-6)
    passed(name, len(cases) + 3, "s from 1 to 0.002, 2D and image shapes, float32 and float64, "
                                 "diffusers' ScoreSdeVpScheduler.step_pred")


def _drift_hint(got, x, score, beta) -> str:
    wrong = [
        (-0.5 * beta * x - beta * score, "the score has weight g^2 = beta: that is the reverse SDE's drift; "
                                         "the ODE takes half of it, 1/2 g^2 score, and needs no noise"),
        (-0.5 * beta * score, "the drift f(x, s) = -1/2 beta x is missing"),
        (-0.5 * beta * x + 0.5 * beta * score, "the score term has the wrong sign: dx/ds = f - 1/2 g^2 score"),
        (0.5 * beta * x + 0.5 * beta * score, "this is minus the drift: return dx/ds itself (the sampler "
                                              "integrates it backwards in s)"),
        (-beta * x - beta * score, "both terms are twice too large: f = -1/2 beta x and 1/2 g^2 = 1/2 beta"),
    ]
    for candidate, hint in wrong:
        if _close(got, candidate):
            return "\nhint: " + hint
    return ""


def check_pf_ode_drift(student_pf_ode_drift) -> None:
    """Check ``pf_ode_drift(x, score, beta_s) -> dx/ds`` of the VP probability-flow ODE (eq. 13)."""
    name = "pf_ode_drift"
    cases = _cases(seed=1, with_ds=False)[::2] + _cases(seed=2, with_ds=False)[1::2]
    for case, s, _, x, score, _ in cases:
        beta = _VP.beta(s)
        got = call_student(name, student_pf_ode_drift, case, x.clone(), score.clone(), beta)
        expected = sde.pf_ode_drift(_VP, x, s, score)
        compare(name, "dx/ds", got, expected, case + _drift_hint(got, x, score, beta))
    # the ODE's drift moves the Gaussian N(0, I) nowhere: its score is -x, and f - 1/2 g^2 (-x) = 0
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    got = call_student(name, student_pf_ode_drift, "standard normal, score = -x", x.clone(), -x.clone(), 7.0)
    compare(name, "dx/ds", got, torch.zeros_like(x),
            "x ~ N(0, I) with its exact score -x: N(0, I) is the VP SDE's stationary law, so the drift must be 0")
    passed(name, len(cases) + 1, "s from 1 to 0.002, 2D and image shapes, float32 and float64, "
                                 "the stationary N(0, I)")


# --------------------------------------------------------------------------- the Langevin corrector step

def _langevin_variants(x, score, noise, snr, alpha):
    """The step size of each usual mistake, with the hint that names it."""
    def per_sample(v):
        return v.reshape(len(v), -1).norm(dim=-1)

    z_norm, s_norm = per_sample(noise).mean(), per_sample(score).mean()
    right = 2 * alpha * (snr * z_norm / s_norm) ** 2
    shape = (-1,) + (1,) * (x.dim() - 1)
    per_sample_eps = (2 * alpha * (snr * per_sample(noise) / per_sample(score)) ** 2).reshape(shape)
    whole = 2 * alpha * (snr * noise.norm() / score.norm()) ** 2
    step = lambda eps, noise_scale=None: x + eps * score + (noise_scale if noise_scale is not None  # noqa: E731
                                                           else torch.sqrt(2 * torch.as_tensor(eps))) * noise
    return [
        (step(2 * alpha * (snr * s_norm / z_norm) ** 2), "the ratio is upside down: the score push "
         "eps ||score|| must be r sqrt(alpha) times the noise sqrt(2 eps) ||z||, so eps grows with ||z|| / ||score||"),
        (step(alpha * (snr * z_norm / s_norm) ** 2), "eps is half the right size: solve eps ||score|| = r sqrt(alpha) "
         "sqrt(2 eps) ||z|| for eps again (square both sides; the 2 of sqrt(2 eps) stays)"),
        (step(right, torch.sqrt(right)), "the noise term of a Langevin step is sqrt(2 eps) z, not sqrt(eps) z"),
        (step(2 * (snr * z_norm / s_norm) ** 2), "alpha is missing from the step size: eps = 2 alpha (...)^2"),
        (step(per_sample_eps), "one eps for the whole batch: average the per-sample norms over the batch first "
         "(as Song's code and diffusers do), then form the ratio; you took one ratio per sample"),
        (step(whole), "the norms are per sample, then averaged over the batch; you took one norm of the whole "
         "batch (or, the same, averaged the squared norms): take each sample's norm, then the mean of those"),
        (x - right * score + torch.sqrt(2 * right) * noise, "the score step goes up the log-density: + eps score"),
    ]


def _langevin_cases(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for shape, dtype, snr, alpha, spread in [((16, 2), torch.float32, 0.16, 1.0, 1.0),
                                             ((16, 2), torch.float32, 0.16, 0.98, 30.0),
                                             ((3, 1, 8, 8), torch.float64, 0.05, 0.999, 5.0),
                                             ((6, 3, 4, 4), torch.float32, 0.3, 0.9, 0.1),
                                             ((1, 2), torch.float64, 0.16, 1.0, 1.0)]:
        scale = torch.logspace(0, math.log10(spread), shape[0], dtype=dtype).reshape(-1, *[1] * (len(shape) - 1))
        case = (f"x of shape {shape}, {dtype}, snr = {snr}, alpha = {alpha}"
                + (f", score norms varying {spread:g}x across the batch" if spread != 1 else ""))
        cases.append((case, torch.randn(shape, generator=gen, dtype=dtype),
                      torch.randn(shape, generator=gen, dtype=dtype) * scale,
                      torch.randn(shape, generator=gen, dtype=dtype), snr, alpha))
    return cases


def check_langevin_step(student_langevin_step) -> None:
    """Check ``langevin_step(x, score, noise, snr, alpha)``: x + eps score + sqrt(2 eps) z with
    eps = 2 alpha (snr ||z|| / ||score||)^2, the norms per sample and averaged over the batch (Song et al.
    Algorithm 5), against sde.langevin_step and diffusers' ScoreSdeVeScheduler.step_correct."""
    name = "langevin_step"
    cases = _langevin_cases()
    for case, x, score, noise, snr, alpha in cases:
        got = call_student(name, student_langevin_step, case, x.clone(), score.clone(), noise.clone(), snr, alpha)
        expected = sde.langevin_step(x, score, noise, snr=snr, alpha=alpha)
        hint = ""
        if not _close(got, expected):
            hint = next(("\nhint: " + h for wrong, h in _langevin_variants(x, score, noise, snr, alpha)
                         if _close(got, wrong.to(x.dtype))), "")
        compare(name, "the corrected x", got, expected, case + hint)
    from diffusers import ScoreSdeVeScheduler

    scheduler = ScoreSdeVeScheduler(snr=0.16)
    scheduler.set_timesteps(10)
    for seed, shape in [(1, (4, 1, 8, 8)), (2, (32, 2))]:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(100 + seed))
        score = torch.randn(shape, generator=torch.Generator().manual_seed(200 + seed)) * 7
        theirs = scheduler.step_correct(score, x, generator=torch.Generator().manual_seed(seed)).prev_sample
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))  # the z diffusers drew
        case = f"against diffusers' ScoreSdeVeScheduler(snr=0.16).step_correct, x of shape {shape}, same noise"
        got = call_student(name, student_langevin_step, case, x.clone(), score.clone(), noise.clone(), 0.16, 1.0)
        compare(name, "the corrected x", got, theirs, case)
    passed(name, len(cases) + 2, "2D and image batches, float32 and float64, score norms varying across the batch, "
                                 "a batch of one, diffusers' ScoreSdeVeScheduler.step_correct")
