"""DDPM (notebook 03): the variational bound, its per-t weights, L_simple, the ancestral step and sampler.

Equation numbers are those of Ho et al. 2020, "Denoising Diffusion Probabilistic Models".
Code timestep t = 0, ..., T-1 is the paper's step t+1: the bound's term L_{t-1} of the paper is
the KL at code index t >= 1, and code index 0 is the decoder term L_0.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import forward, validate
from .schedules import NoiseSchedule

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
VARIANCES = ("beta", "beta_tilde")


def gaussian_kl(mean_q, var_q, mean_p, var_p) -> torch.Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) per element, in nats (diagonal Gaussians).

    KL = 1/2 [log(var_p / var_q) + (var_q + (mean_q - mean_p)^2) / var_p - 1].
    """
    mean_q, mean_p = validate.floating("mean_q", mean_q), validate.floating("mean_p", mean_p)
    var_q, var_p = validate.floating("var_q", var_q), validate.floating("var_p", var_p)
    if (var_q <= 0).any() or (var_p <= 0).any():
        raise ValueError("variances must be positive; at t = 0 the posterior variance is 0 and the bound "
                         "uses the decoder term L_0 instead of a KL")
    return 0.5 * (torch.log(var_p / var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1)


def reverse_variance(schedule: NoiseSchedule, variance: str = "beta_tilde") -> torch.Tensor:
    """sigma_t^2 of p_theta(x_{t-1} | x_t): beta_t, or beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t."""
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if variance == "beta":
        return schedule.betas
    return (1 - schedule.alpha_bar_prev) / (1 - schedule.alpha_bar) * schedule.betas


def model_mean(schedule: NoiseSchedule, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """mu_theta(x_t, t) = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_t) (eq. 11)."""
    x_t, eps = validate.floating("x_t", x_t), validate.floating("eps", eps)
    validate.same_shape("x_t", x_t, "eps", eps)
    beta_t = schedule.at(schedule.betas, t, x_t)
    alpha_t = schedule.at(schedule.alphas, t, x_t)
    alpha_bar_t = schedule.at(schedule.alpha_bar, t, x_t)
    return ((x_t - (beta_t / torch.sqrt(1 - alpha_bar_t)).to(x_t.dtype) * eps)
            / torch.sqrt(alpha_t).to(x_t.dtype))


def vlb_weights(schedule: NoiseSchedule, variance: str = "beta_tilde") -> torch.Tensor:
    """lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)) (eq. 12): L_{t-1} = lambda_t E||eps - eps_theta||^2 + C_t.

    C_t does not depend on theta: it is 0 for sigma_t^2 = beta_tilde_t (the KL between two Gaussians of the same
    variance is the squared mean difference alone) and, for sigma_t^2 = beta_t, the KL's variance mismatch,
    d/2 (beta_tilde_t / beta_t - 1 - log(beta_tilde_t / beta_t)) for x in R^d.
    Entry 0 is NaN: code index 0 is the decoder term L_0, not a KL.
    """
    sigma2 = reverse_variance(schedule, variance)
    weights = schedule.betas ** 2 / (2 * sigma2 * schedule.alphas * (1 - schedule.alpha_bar))
    weights[0] = float("nan")
    return weights


def l_simple(eps_model: EpsModel, schedule: NoiseSchedule, x_0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """L_simple = E ||eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t)||^2 (eq. 14).

    The mean over the batch and every dimension, as in diffusers' training examples.
    """
    t = validate.timesteps("t", t, schedule.T, batch=len(x_0))
    return F.mse_loss(eps_model(forward.q_sample(schedule, x_0, t, eps), t), eps)


def random_l_simple(eps_model: EpsModel, schedule: NoiseSchedule, x_0: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """L_simple with t ~ Uniform{0, ..., T-1} and eps ~ N(0, I) drawn here: one training step's loss."""
    t = torch.randint(0, schedule.T, (x_0.shape[0],), generator=generator)
    eps = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype)
    return l_simple(eps_model, schedule, x_0, t, eps)


def prior_term(schedule: NoiseSchedule, x_0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per sample, summed over dimensions (nats). No parameters."""
    x_0 = validate.floating("x_0", x_0).double()
    alpha_bar = schedule.alpha_bar[-1]
    kl = gaussian_kl(alpha_bar.sqrt() * x_0, (1 - alpha_bar).expand_as(x_0),
                     torch.zeros_like(x_0), torch.ones_like(x_0))
    return kl.flatten(1).sum(1)


def kl_term(eps_model: EpsModel, schedule: NoiseSchedule, x_0: torch.Tensor, t: int, eps: torch.Tensor,
            variance: str = "beta_tilde") -> torch.Tensor:
    """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) per sample, summed over dimensions (nats)."""
    t = int(validate.timesteps("t", t, schedule.T)[0])
    if t == 0:
        raise ValueError("t = 0 is the decoder term L_0: use decoder_nll")
    t_batch = torch.full((len(x_0),), t, dtype=torch.long)
    x_t = forward.q_sample(schedule, x_0, t_batch, eps)
    with torch.no_grad():
        eps_theta = eps_model(x_t, t_batch)
    mean_q, var_q = forward.q_posterior(schedule, x_0.double(), x_t.double(), t_batch)
    mean_p = model_mean(schedule, x_t.double(), t_batch, eps_theta.double())
    var_p = reverse_variance(schedule, variance)[t]
    kl = gaussian_kl(mean_q, var_q.expand_as(mean_q), mean_p, var_p.expand_as(mean_p))
    return kl.flatten(1).sum(1)


def decoder_nll(eps_model: EpsModel, schedule: NoiseSchedule, x_0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """L_0 = -log p_theta(x_0 | x_1) per sample (nats), with a continuous Gaussian decoder of variance beta_1.

    Ho et al. discretise this Gaussian over the 256 pixel bins (eq. 13); for continuous 2D data it is the density.
    """
    t_batch = torch.zeros(len(x_0), dtype=torch.long)
    x_t = forward.q_sample(schedule, x_0, t_batch, eps)
    with torch.no_grad():
        eps_theta = eps_model(x_t, t_batch)
    mean = model_mean(schedule, x_t.double(), t_batch, eps_theta.double())
    var = schedule.betas[0]
    nll = 0.5 * (torch.log(2 * math.pi * var) + (x_0.double() - mean) ** 2 / var)
    return nll.flatten(1).sum(1)


def variational_bound(eps_model: EpsModel, schedule: NoiseSchedule, x_0: torch.Tensor, seed: int = 0,
                      variance: str = "beta_tilde", progress: bool = False) -> dict:
    """Every term of L = L_T + sum_t L_{t-1} + L_0 (eq. 5), per sample in nats, for one draw of eps per t.

    Returns {"prior": (B,), "kl": (T-1, B) for code t = 1..T-1, "decoder": (B,), "total": (B,)}.
    T model calls: cheap for the 2D models, slow for images (use kl_term at a few t there).
    """
    from tqdm.auto import tqdm

    x_0 = validate.floating("x_0", x_0)
    gen = torch.Generator().manual_seed(seed)
    noises = [torch.randn(x_0.shape, generator=gen, dtype=x_0.dtype) for _ in range(schedule.T)]
    kl = torch.stack([kl_term(eps_model, schedule, x_0, t, noises[t], variance)
                      for t in tqdm(range(1, schedule.T), desc="bound terms", disable=not progress, leave=False)])
    prior, decoder = prior_term(schedule, x_0), decoder_nll(eps_model, schedule, x_0, noises[0])
    return {"prior": prior, "kl": kl, "decoder": decoder, "total": prior + kl.sum(0) + decoder}


def variational_bounds(eps_model: EpsModel, schedule: NoiseSchedule, x_0: torch.Tensor, seed: int = 0,
                       variances: tuple = ("beta_tilde", "beta"), progress: bool = False) -> dict:
    """``variational_bound`` for several reverse variances, {variance: bound}, from one set of T model calls.

    eps_theta(x_t, t) does not depend on the variance, and the same seed draws the same x_t at every t, so each
    call is made once and reused.
    """
    calls = {}

    def remembered(x_t, t):
        key = int(t[0])
        if key not in calls:
            calls[key] = eps_model(x_t, t)
        return calls[key]
    return {variance: variational_bound(remembered, schedule, x_0, seed, variance, progress) for variance in variances}


# --------------------------------------------------------------------------- ancestral sampling (Algorithm 2)

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
