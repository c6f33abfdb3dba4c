"""The forward (noising) process of DDPM and its posterior.

Equation numbers are those of Ho et al. 2020, "Denoising Diffusion Probabilistic Models".
"""
from __future__ import annotations

import torch

from . import validate
from .schedules import NoiseSchedule


def _check_x(name: str, x) -> torch.Tensor:
    x = validate.floating(name, x)
    if x.dim() < 1:
        raise ValueError(f"{name} must have a batch dimension, got a scalar")
    return x


def q_step(schedule: NoiseSchedule, x_prev: torch.Tensor, t, eps: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """One step of the kernel q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (eq. 2)."""
    x_prev = _check_x("x_prev", x_prev)
    if eps is None:
        eps = torch.randn(x_prev.shape, generator=generator, dtype=x_prev.dtype)
    eps = validate.floating("eps", eps)
    validate.same_shape("x_prev", x_prev, "eps", eps)
    beta_t = schedule.at(schedule.betas, t, x_prev)
    return torch.sqrt(1 - beta_t).to(x_prev.dtype) * x_prev + torch.sqrt(beta_t).to(x_prev.dtype) * eps


def q_sample(schedule: NoiseSchedule, x_0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """Closed form q(x_t | x_0): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (eq. 4).

    x_0 and eps have shape (B, ...); t is an int or a (B,) tensor of timesteps in [0, T).
    """
    x_0 = _check_x("x_0", x_0)
    eps = validate.floating("eps", eps)
    validate.same_shape("x_0", x_0, "eps", eps)
    alpha_bar_t = schedule.at(schedule.alpha_bar, t, x_0)
    return torch.sqrt(alpha_bar_t).to(x_0.dtype) * x_0 + torch.sqrt(1 - alpha_bar_t).to(x_0.dtype) * eps


def q_posterior(schedule: NoiseSchedule, x_0: torch.Tensor, x_t: torch.Tensor, t):
    """Mean and variance of q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I) (eqs. 6-7).

    mu_tilde = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
             + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
    beta_tilde = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

    Returns (mu_tilde, beta_tilde) with beta_tilde shaped to broadcast against x_t.
    At t = 0 the "previous" sample is the data itself: mu_tilde = x_0 and beta_tilde = 0.
    """
    x_0 = _check_x("x_0", x_0)
    x_t = _check_x("x_t", x_t)
    validate.same_shape("x_0", x_0, "x_t", x_t)
    beta_t = schedule.at(schedule.betas, t, x_t)
    alpha_t = schedule.at(schedule.alphas, t, x_t)
    alpha_bar_t = schedule.at(schedule.alpha_bar, t, x_t)
    alpha_bar_prev = schedule.at(schedule.alpha_bar_prev, t, x_t)
    coef_x0 = torch.sqrt(alpha_bar_prev) * beta_t / (1 - alpha_bar_t)
    coef_xt = torch.sqrt(alpha_t) * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
    mean = coef_x0.to(x_t.dtype) * x_0 + coef_xt.to(x_t.dtype) * x_t
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t
    return mean, variance.to(x_t.dtype)


def predict_x0_from_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """Invert eq. 4: x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    x_t = _check_x("x_t", x_t)
    eps = validate.floating("eps", eps)
    validate.same_shape("x_t", x_t, "eps", eps)
    alpha_bar_t = schedule.at(schedule.alpha_bar, t, x_t)
    return (x_t - torch.sqrt(1 - alpha_bar_t).to(x_t.dtype) * eps) / torch.sqrt(alpha_bar_t).to(x_t.dtype)


def trajectory(schedule: NoiseSchedule, x_0: torch.Tensor, timesteps, seed: int = 0) -> list[torch.Tensor]:
    """x_t at each of ``timesteps`` for one shared eps, so frames differ only by t (for scrubbers)."""
    x_0 = _check_x("x_0", x_0)
    eps = torch.randn(x_0.shape, generator=torch.Generator().manual_seed(seed), dtype=x_0.dtype)
    return [q_sample(schedule, x_0, int(t), eps) for t in timesteps]


def reverse_kernel_on_grid(prior, x_t: float, beta: float, grid: torch.Tensor) -> torch.Tensor:
    """The true one-step reverse kernel q(x_{t-1} | x_t) of a 1D process, by Bayes on a grid.

    q(x_{t-1} | x_t) is proportional to N(x_t; sqrt(1 - beta) x_{t-1}, beta) q(x_{t-1}), where
    ``prior(grid)`` gives the density q(x_{t-1}). Returns the normalised density on ``grid``.
    Sohl-Dickstein et al. (2015): for small beta this is close to a Gaussian; for large beta it is not.
    """
    if not 0 < beta < 1:
        raise ValueError(f"beta must lie in (0, 1), got {beta}")
    grid = validate.floating("grid", grid)
    log_lik = -0.5 * (x_t - (1 - beta) ** 0.5 * grid) ** 2 / beta
    density = torch.exp(log_lik - log_lik.max()) * prior(grid)
    return density / torch.trapezoid(density, grid)


# --------------------------------------------------------------------------- binomial diffusion

def binomial_q_step(bits: torch.Tensor, beta_t: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sohl-Dickstein et al. (2015) binomial kernel: q(x_t | x_{t-1}) = B(x_t; x_{t-1} (1 - beta_t) + beta_t / 2).

    Each bit is kept with probability 1 - beta_t and otherwise redrawn uniformly.
    """
    bits = validate.as_tensor("bits", bits)
    if not bool(((bits == 0) | (bits == 1)).all()):
        raise ValueError("bits must hold only 0s and 1s")
    p_one = bits.float() * (1 - beta_t) + beta_t / 2
    return (torch.rand(bits.shape, generator=generator) < p_one).to(bits.dtype)


def binomial_keep_probability(betas: torch.Tensor) -> torch.Tensor:
    """P(x_t = x_0) for every t under the binomial kernel: 1/2 + 1/2 prod_{s<=t} (1 - beta_s).

    Each step keeps the information "bit = x_0" with probability 1 - beta_s; once redrawn, a bit is a fair coin.
    """
    betas = validate.floating("betas", betas)
    return 0.5 + 0.5 * torch.cumprod(1 - betas, dim=0)
