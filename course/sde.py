"""Score-based diffusion in continuous time: the VP and VE SDEs, their reverse-time SDE and probability-flow ODE.

Equation numbers are those of Song et al. 2021, "Score-Based Generative Modeling through Stochastic
Differential Equations" (ICLR 2021).

**Time convention.** Continuous time s runs over [0, 1]: s = 0 is the clean data x_0, s = 1 is (almost) pure
noise. The discrete code timestep t = 0, ..., T-1 (paper step t+1) sits at s_t = (t + 1) / T, and a model
trained on discrete timesteps is evaluated at t = round(s T) - 1 (clamped to [0, T-1]). With T = 1000 and the
linear schedule, beta(s) = 0.1 + s (20 - 0.1) is T * beta_t up to O(1/T); the noise scale sqrt(1 - alpha_bar(s_t))
matches the discrete one to 0.4 % for t >= 100 (5 % at t = 0, where it is 0.01), and the signal scale
sqrt(alpha_bar) to 3.5 % (at t = T-1, where it is 0.006): exp(-sum beta) is not prod(1 - beta) exactly.

Samplers take a score function ``score(x, s)`` (a float s for the whole batch): the exact score of a toy
distribution, or ``eps_model_score(eps_model, sde)`` for a trained eps_theta(x_t, t). They integrate
from s = 1 down to s_min = 1 / T (t = 0) on a uniform grid of ``steps`` points, then take the last step to
s = 0 with the denoiser x_0 = (x + (1 - alpha_bar) score) / sqrt(alpha_bar) (Tweedie's formula), which is
also what DDPM's last step (t = 0, no noise) does. Each returns (x_0, info) with info["nfe"] = the number of
score evaluations and info["path"] = [(s, x), ...] when ``keep_path`` is set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from . import ddim, validate
from .schedules import NoiseSchedule

ScoreFn = Callable[[torch.Tensor, float], torch.Tensor]


def _check_s(s) -> float:
    s = float(s)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"continuous time s must lie in [0, 1], got {s}")
    return s


# --------------------------------------------------------------------------- the forward SDEs

@dataclass(frozen=True)
class VPSDE:
    """The variance-preserving SDE dx = -1/2 beta(s) x ds + sqrt(beta(s)) dw (eq. 11), DDPM's continuous limit.

    beta(s) = beta_min + s (beta_max - beta_min); DDPM's discrete chain x_t = sqrt(1 - beta_t) x_{t-1}
    + sqrt(beta_t) z (eq. 10) is its discretisation with beta_t = beta(s_t) / T. The marginal is
    q(x_s | x_0) = N(sqrt(alpha_bar(s)) x_0, (1 - alpha_bar(s)) I) with
    alpha_bar(s) = exp(-int_0^s beta) (eq. 29, appendix B), the continuous alpha_bar_t.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: int = 1000

    def __post_init__(self):
        if not 0 < self.beta_min <= self.beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got {self.beta_min} and {self.beta_max}")
        validate.positive_int("T", self.T)

    @classmethod
    def from_schedule(cls, schedule: NoiseSchedule) -> "VPSDE":
        """The VP SDE whose discretisation is ``schedule`` (linear betas): beta_min = T beta_0, beta_max = T beta_(T-1)."""
        T = schedule.T
        return cls(float(schedule.betas[0]) * T, float(schedule.betas[-1]) * T, T)

    def beta(self, s) -> float:
        return self.beta_min + _check_s(s) * (self.beta_max - self.beta_min)

    def alpha_bar(self, s) -> float:
        """alpha_bar(s) = exp(-int_0^s beta(u) du) = exp(-beta_min s - (beta_max - beta_min) s^2 / 2)."""
        s = _check_s(s)
        return math.exp(-self.beta_min * s - 0.5 * (self.beta_max - self.beta_min) * s ** 2)

    def marginal_std(self, s) -> float:
        """sqrt(1 - alpha_bar(s)): the std of the noise in x_s, and the scale that turns eps into a score."""
        s = _check_s(s)
        return math.sqrt(-math.expm1(-self.beta_min * s - 0.5 * (self.beta_max - self.beta_min) * s ** 2))

    def drift(self, x: torch.Tensor, s) -> torch.Tensor:
        """f(x, s) = -1/2 beta(s) x."""
        return -0.5 * self.beta(s) * x

    def diffusion(self, s) -> float:
        """g(s) = sqrt(beta(s))."""
        return math.sqrt(self.beta(s))

    def signal_scale(self, s) -> float:
        """sqrt(alpha_bar(s)): x_s = signal_scale x_0 + marginal_std eps."""
        return math.sqrt(self.alpha_bar(s))

    def prior_std(self) -> float:
        """The std of the prior the samplers start from: N(0, I)."""
        return 1.0

    def corrector_alpha(self, s) -> float:
        """alpha of the Langevin corrector's step size (Algorithm 5): 1 - beta(s) / T."""
        return 1 - self.beta(s) / self.T

    def timestep(self, s) -> int:
        """The discrete code timestep of continuous time s: t = round(s T) - 1, clamped to [0, T-1]."""
        return min(max(round(_check_s(s) * self.T) - 1, 0), self.T - 1)

    def time(self, t: int) -> float:
        """The continuous time s_t = (t + 1) / T of code timestep t."""
        if not 0 <= int(t) < self.T:
            raise ValueError(f"t must lie in [0, {self.T}), got {t}")
        return (int(t) + 1) / self.T


@dataclass(frozen=True)
class VESDE:
    """The variance-exploding SDE dx = sqrt(d[sigma^2(s)]/ds) dw (eq. 9), the limit of SMLD/NCSN's noise levels.

    sigma(s) = sigma_min (sigma_max / sigma_min)^s, so f = 0 and g(s) = sigma(s) sqrt(2 log(sigma_max / sigma_min)).
    The marginal is N(x_0, (sigma(s)^2 - sigma(0)^2) I): the data is never shrunk, the noise grows without bound.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: int = 1000  # the number of noise levels; the samplers stop at s_min = 1 / T

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        validate.positive_int("T", self.T)

    def sigma(self, s) -> float:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _check_s(s)

    def marginal_std(self, s) -> float:
        return math.sqrt(self.sigma(s) ** 2 - self.sigma_min ** 2)

    def drift(self, x: torch.Tensor, s) -> torch.Tensor:
        return torch.zeros_like(x)

    def diffusion(self, s) -> float:
        return self.sigma(s) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def signal_scale(self, s) -> float:
        """1: the VE SDE never shrinks the data, x_s = x_0 + marginal_std z."""
        return 1.0

    def prior_std(self) -> float:
        """The std of the prior the samplers start from: N(0, sigma_max^2 I)."""
        return self.sigma_max

    def corrector_alpha(self, s) -> float:
        """alpha of the Langevin corrector's step size: 1 for the VE SDE (Algorithm 4)."""
        return 1.0


def forward_sde_path(sde, x_0: torch.Tensor, steps: int = 1000, seed: int = 0) -> list[tuple[float, torch.Tensor]]:
    """Simulate the forward SDE dx = f ds + g dw (eq. 5) from x_0 at s = 0 to s = 1 with Euler-Maruyama."""
    x = validate.floating("x_0", x_0).clone()
    steps = validate.positive_int("steps", steps)
    gen = torch.Generator().manual_seed(seed)
    ds = 1.0 / steps
    path = [(0.0, x.clone())]
    for i in range(steps):
        s = i * ds
        x = x + sde.drift(x, s) * ds + sde.diffusion(s) * math.sqrt(ds) * torch.randn(x.shape, generator=gen,
                                                                                         dtype=x.dtype)
        path.append(((i + 1) * ds, x.clone()))
    return path


# --------------------------------------------------------------------------- scores

def score_from_eps(eps: torch.Tensor, marginal_std: float) -> torch.Tensor:
    """grad_x log q(x_s | x_0) = -eps / sqrt(1 - alpha_bar(s)): an eps-predictor is a scaled score model.

    x_s = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps, so the Gaussian's score -(x_s - sqrt(alpha_bar) x_0)
    / (1 - alpha_bar) is -eps / sqrt(1 - alpha_bar); score matching with this target (eq. 7) is the DDPM loss
    up to a weight of 1 / (1 - alpha_bar) per timestep.
    """
    eps = validate.floating("eps", eps)
    if not marginal_std > 0:
        raise ValueError(f"marginal_std must be > 0 (the score at s = 0 is not defined), got {marginal_std}")
    return -eps / marginal_std


def eps_model_score(eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sde: VPSDE) -> ScoreFn:
    """score(x, s) from a trained eps_theta(x_t, t): evaluate it at t = sde.timestep(s), divide by -sqrt(1 - alpha_bar(s))."""

    def score(x: torch.Tensor, s: float) -> torch.Tensor:
        t = torch.full((x.shape[0],), sde.timestep(s), dtype=torch.long)
        with torch.no_grad():
            eps = eps_model(x, t)
        return score_from_eps(eps, sde.marginal_std(s))
    return score


def mixture_score(mixture, sde) -> ScoreFn:
    """The exact score of a datasets.GaussianMixture2D noised to time s by the VP or the VE SDE."""
    if isinstance(sde, VESDE):
        return lambda x, s: mixture.score(x, 1.0, sde.marginal_std(s) ** 2)
    return lambda x, s: mixture.score(x, sde.alpha_bar(s))


def mixture_class_log_prob(mixture, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """log p_t(y = k | x) for every component k of a GaussianMixture2D noised to alpha_bar: shape (N, K).

    The exact noisy "classifier" of the toy: Bayes' rule on the noised components
    N(sqrt(alpha_bar) mu_k, (alpha_bar std^2 + 1 - alpha_bar) I). Differentiable in x.
    """
    x = validate.floating("x", x)
    means = torch.tensor(mixture.means, dtype=x.dtype) * math.sqrt(alpha_bar)
    var = alpha_bar * mixture.std ** 2 + 1 - alpha_bar
    log_w = torch.log(torch.tensor(mixture.weights, dtype=x.dtype))
    log_joint = log_w - 0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1) / var
    return log_joint - torch.logsumexp(log_joint, dim=1, keepdim=True)


def log_prob_grad(log_prob_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                  y: torch.Tensor) -> torch.Tensor:
    """grad_x log p_t(y | x) by autograd, for ``log_prob_fn(x) -> (N, K)`` log-probabilities and labels y (N,)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        chosen = log_prob_fn(x).gather(1, y.long()[:, None]).sum()
        return torch.autograd.grad(chosen, x)[0]


def conditional_score(score: ScoreFn, class_log_prob_grad: Callable[[torch.Tensor, float], torch.Tensor],
                      scale: float = 1.0) -> ScoreFn:
    """grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x) (eq. 14), with the classifier term scaled.

    scale = 1 is Bayes' rule exactly; scale > 1 is classifier guidance (notebook 06), which sharpens p(y | x).
    """

    def guided(x: torch.Tensor, s: float) -> torch.Tensor:
        return score(x, s) + scale * class_log_prob_grad(x, s)
    return guided


# --------------------------------------------------------------------------- one step of each solver

def reverse_sde_drift(sde, x: torch.Tensor, s: float, score: torch.Tensor) -> torch.Tensor:
    """The reverse-time SDE's drift f(x, s) - g(s)^2 score (eq. 6)."""
    return sde.drift(x, s) - sde.diffusion(s) ** 2 * score


def pf_ode_drift(sde, x: torch.Tensor, s: float, score: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE's drift dx/ds = f(x, s) - 1/2 g(s)^2 score (eq. 13): same marginals, no noise."""
    return sde.drift(x, s) - 0.5 * sde.diffusion(s) ** 2 * score


def em_step(sde, x: torch.Tensor, s: float, ds: float, score: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One Euler-Maruyama step of the reverse-time SDE (eq. 6) from s down to s - ds (ds > 0).

    x_{s - ds} = x_s - [f(x_s, s) - g(s)^2 score] ds + g(s) sqrt(ds) z. For the VP SDE:
    x + (1/2 beta x + beta score) ds + sqrt(beta ds) z. Equals diffusers' ScoreSdeVpScheduler.step_pred.
    """
    x = validate.floating("x", x)
    validate.same_shape("x", x, "score", score)
    validate.same_shape("x", x, "noise", noise)
    if not ds > 0:
        raise ValueError(f"ds must be > 0 (the reverse step goes down in s), got {ds}")
    return x - reverse_sde_drift(sde, x, s, score) * ds + sde.diffusion(s) * math.sqrt(ds) * noise


def langevin_step(x: torch.Tensor, score: torch.Tensor, noise: torch.Tensor, snr: float = 0.16,
                  alpha: float = 1.0) -> torch.Tensor:
    """One Langevin MCMC correction x + eps score + sqrt(2 eps) z at a fixed noise level (Algorithm 5, app. G).

    The step size eps = 2 alpha (snr ||z|| / ||score||)^2 (norms averaged over the batch, as in Song's code and
    diffusers' ScoreSdeVeScheduler.step_correct) keeps the ratio of the score step to the noise fixed.
    """
    x = validate.floating("x", x)
    validate.same_shape("x", x, "score", score)
    validate.same_shape("x", x, "noise", noise)
    grad_norm = score.reshape(len(score), -1).norm(dim=-1).mean()
    noise_norm = noise.reshape(len(noise), -1).norm(dim=-1).mean()
    step = 2 * alpha * (snr * noise_norm / grad_norm) ** 2
    return x + step * score + torch.sqrt(2 * step) * noise


def denoise(sde, x: torch.Tensor, s: float, score: torch.Tensor) -> torch.Tensor:
    """Tweedie's formula, the final noise-free step: E[x_0 | x_s] = (x_s + std(s)^2 score) / signal_scale(s).

    VP: (x_s + (1 - alpha_bar(s)) score) / sqrt(alpha_bar(s)); VE: x_s + sigma(s)^2 score.
    """
    return (x + sde.marginal_std(s) ** 2 * score) / sde.signal_scale(s)


def prior_sample(sde, shape: tuple, gen: torch.Generator, x_T: torch.Tensor | None) -> torch.Tensor:
    """Where every sampler starts: x_T if given, else N(0, prior_std^2 I) (VP: N(0, I); VE: N(0, sigma_max^2 I))."""
    x = ddim.initial_noise(shape, gen, x_T)
    return x if x_T is not None else x * sde.prior_std()


# --------------------------------------------------------------------------- samplers

def time_grid(steps: int, T: int = 1000) -> list[float]:
    """``steps`` times evenly spaced from s = 1 down to s_min = 1 / T; with steps = T they are exactly s_t, t = T-1..0."""
    steps = validate.positive_int("steps", steps)
    if steps == 1:
        return [1.0]
    return np.linspace(1.0, 1.0 / T, steps).tolist()


@torch.no_grad()
def euler_maruyama_sample(score: ScoreFn, sde, shape: tuple, steps: int = 100, seed: int = 0,
                          x_T: torch.Tensor | None = None, keep_path: bool = False, progress: bool = True):
    """Sample by Euler-Maruyama on the reverse-time SDE (eq. 6): ``steps`` score evaluations, the last one denoises.

    With steps = T on the VP SDE of DDPM's schedule, each step agrees with DDPM's ancestral step to first order in
    beta_t only, and not near t = 0, where beta_tilde_t / beta_t is far from 1 (at t = 1 it is about 0.5); the
    noises are drawn in the same order as ``ddpm.ddpm_sample``'s.
    """
    gen = torch.Generator().manual_seed(seed)
    x = prior_sample(sde, shape, gen, x_T)
    grid = time_grid(steps, sde.T)
    path = [(grid[0], x.clone())] if keep_path else []
    for s, s_next in tqdm(list(zip(grid, grid[1:])), desc=f"Euler-Maruyama, {steps} steps", disable=not progress,
                          leave=False):
        x = em_step(sde, x, s, s - s_next, score(x, s), torch.randn(x.shape, generator=gen, dtype=x.dtype))
        if keep_path:
            path.append((s_next, x.clone()))
    x = denoise(sde, x, grid[-1], score(x, grid[-1]))
    return x, {"nfe": steps, "path": path + ([(0.0, x.clone())] if keep_path else [])}


@torch.no_grad()
def ode_sample(score: ScoreFn, sde, shape: tuple, steps: int = 50, method: str = "heun", seed: int = 0,
               x_T: torch.Tensor | None = None, keep_path: bool = False, progress: bool = True):
    """Integrate the probability-flow ODE (eq. 13) from s = 1 to s_min with Euler or Heun (2nd order), then denoise.

    Deterministic: x_T decides x_0. Euler costs ``steps`` score evaluations, Heun 2 steps - 2: like Karras et al.
    (2022, Algorithm 1) the last interval, which ends where the score is largest (-eps / 0.01 at s_min), takes a
    plain Euler step; a Heun correction evaluated there at the Euler guess made 10-step digits 7x worse.
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    gen = torch.Generator().manual_seed(seed)
    x = prior_sample(sde, shape, gen, x_T)
    grid = time_grid(steps, sde.T)
    path = [(grid[0], x.clone())] if keep_path else []
    nfe = 0
    intervals = list(zip(grid, grid[1:]))
    for i, (s, s_next) in enumerate(tqdm(intervals, desc=f"PF-ODE {method}, {steps} steps", disable=not progress,
                                         leave=False)):
        h = s_next - s  # negative: the ODE runs backwards in time
        d_1 = pf_ode_drift(sde, x, s, score(x, s))
        nfe += 1
        x_euler = x + h * d_1
        if method == "euler" or i == len(intervals) - 1:
            x = x_euler
        else:
            d_2 = pf_ode_drift(sde, x_euler, s_next, score(x_euler, s_next))
            nfe += 1
            x = x + h * 0.5 * (d_1 + d_2)
        if keep_path:
            path.append((s_next, x.clone()))
    x = denoise(sde, x, grid[-1], score(x, grid[-1]))
    return x, {"nfe": nfe + 1, "path": path + ([(0.0, x.clone())] if keep_path else [])}


@torch.no_grad()
def solve_ivp_sample(score: ScoreFn, sde, shape: tuple, rtol: float = 1e-3, atol: float = 1e-3,
                     method: str = "RK45", seed: int = 0, x_T: torch.Tensor | None = None):
    """The probability-flow ODE (eq. 13) with scipy.integrate.solve_ivp: an adaptive solver picks the steps.

    The whole batch is one state vector in float64, so the solver's error control covers every sample;
    info["nfe"] counts the solver's evaluations plus the final denoising one.
    """
    from scipy.integrate import solve_ivp

    gen = torch.Generator().manual_seed(seed)
    x = prior_sample(sde, shape, gen, x_T)
    s_min = 1.0 / sde.T

    def fun(s, y):
        x_s = torch.from_numpy(y).reshape(shape).to(x.dtype)
        return pf_ode_drift(sde, x_s, s, score(x_s, s)).double().numpy().ravel()

    result = solve_ivp(fun, (1.0, s_min), x.double().numpy().ravel(), method=method, rtol=rtol, atol=atol)
    if not result.success:
        raise RuntimeError(f"solve_ivp failed: {result.message}")
    x = torch.from_numpy(result.y[:, -1]).reshape(shape).to(x.dtype)
    x = denoise(sde, x, s_min, score(x, s_min))
    return x, {"nfe": int(result.nfev) + 1, "path": [], "solver_steps": len(result.t) - 1}


@torch.no_grad()
def pc_sample(score: ScoreFn, sde, shape: tuple, steps: int = 50, corrector_steps: int = 1,
              snr: float = 0.16, seed: int = 0, x_T: torch.Tensor | None = None, keep_path: bool = False,
              progress: bool = True):
    """Predictor-corrector sampling (Algorithm 1): an Euler-Maruyama predictor step, then Langevin corrector steps.

    After each predictor step to s_next, ``corrector_steps`` Langevin steps at the fixed level s_next pull the
    samples towards p_{s_next}; alpha = sde.corrector_alpha (VP: 1 - beta(s)/T, Algorithm 5; VE: 1). Score evaluations:
    steps + (steps - 1) corrector_steps.
    """
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
    gen = torch.Generator().manual_seed(seed)
    x = prior_sample(sde, shape, gen, x_T)
    grid = time_grid(steps, sde.T)
    path = [(grid[0], x.clone())] if keep_path else []
    nfe = 0
    for s, s_next in tqdm(list(zip(grid, grid[1:])), desc=f"PC, {steps} steps", disable=not progress, leave=False):
        x = em_step(sde, x, s, s - s_next, score(x, s), torch.randn(x.shape, generator=gen, dtype=x.dtype))
        nfe += 1
        for _ in range(corrector_steps):
            x = langevin_step(x, score(x, s_next), torch.randn(x.shape, generator=gen, dtype=x.dtype), snr,
                              alpha=sde.corrector_alpha(s_next))
            nfe += 1
        if keep_path:
            path.append((s_next, x.clone()))
    x = denoise(sde, x, grid[-1], score(x, grid[-1]))
    return x, {"nfe": nfe + 1, "path": path + ([(0.0, x.clone())] if keep_path else [])}
