"""Flow matching and rectified flow (notebook 12): the linear path, its velocity, the CFM loss, Euler and Heun,
the DDPM model's probability-flow ODE as a velocity field, reflow and straightness.

Lipman et al. 2023, "Flow Matching for Generative Modeling"; Liu et al. 2023, "Flow Straight and Fast"
(rectified flow). **Time convention.** Flow time s runs over [0, 1] with s = 0 the data x_0 and s = 1 pure
noise eps ~ N(0, I), the same direction as notebook 05's SDE time (Lipman's paper runs the other way: its t = 1
is the data). The linear path is x_s = (1 - s) x_0 + s eps. A network gets the time as a diffusers timestep
on the 0..1000 scale, timestep = TIME_SCALE * s, so the digits flow UNet sees the same range of timesteps as
the DDPM one (0..999); s = 1 maps to 1000. Velocity models are called ``v(x, s)`` with s a float for the batch.
Samplers integrate dx/ds = v(x, s) from s = 1 down to s = 0 and return (x_0, info) with info["nfe"] and
info["path"] = [(s, x), ...] when ``keep_path`` is set.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import ddim, validate
from .schedules import NoiseSchedule

TIME_SCALE = 1000.0  # network timestep = TIME_SCALE * s
VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]


def timestep(s, batch: int) -> torch.Tensor:
    """The (batch,) float timesteps a network is given for flow time s: TIME_SCALE * s."""
    s = torch.as_tensor(s, dtype=torch.float32).reshape(-1)
    return (TIME_SCALE * s).expand(batch) if s.numel() == 1 else TIME_SCALE * s


# --------------------------------------------------------------------------- the linear path

def linear_path(x_0: torch.Tensor, eps: torch.Tensor, s) -> torch.Tensor:
    """x_s = (1 - s) x_0 + s eps: the straight line from the data (s = 0) to the noise (s = 1).

    ``s`` is a float or a (B,) tensor, one time per sample.
    """
    x_0, eps = validate.floating("x_0", x_0), validate.floating("eps", eps)
    validate.same_shape("x_0", x_0, "eps", eps)
    s = validate.broadcast_to_batch(torch.as_tensor(s, dtype=x_0.dtype), x_0) if torch.as_tensor(s).dim() else s
    return (1 - s) * x_0 + s * eps


def conditional_velocity(x_0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """u_s(x_s | x_0, eps) = d x_s / ds = eps - x_0: the same at every s along one line."""
    return eps - x_0


def cfm_loss(velocity_model: Callable, x_0: torch.Tensor, s: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The conditional flow matching loss E || v_theta(x_s, s) - (eps - x_0) ||^2 with x_s = (1 - s) x_0 + s eps.

    ``velocity_model(x_s, s)`` gets the (B,) tensor s. Its minimiser is the marginal velocity
    v(x, s) = E[eps - x_0 | x_s = x] (Lipman et al. 2023, Theorem 2), as the minimiser of denoising score matching
    is the marginal score. The mean over the batch and every dimension, like L_simple.
    """
    s = validate.as_tensor("s", s, dtype=x_0.dtype).reshape(-1)
    if s.numel() != len(x_0):
        raise ValueError(f"s must hold one time per sample ({len(x_0)}), got {s.numel()}")
    if (s < 0).any() or (s > 1).any():
        raise ValueError("flow time s must lie in [0, 1]")
    x_s = linear_path(x_0, eps, s)
    return F.mse_loss(velocity_model(x_s, s), conditional_velocity(x_0, eps))


def random_cfm_loss(velocity_model: Callable, x_0: torch.Tensor, generator: torch.Generator | None = None,
                    eps: torch.Tensor | None = None) -> torch.Tensor:
    """The CFM loss with s ~ Uniform[0, 1] and eps ~ N(0, I) drawn here (or the given paired eps: reflow)."""
    s = torch.rand(len(x_0), generator=generator, dtype=x_0.dtype)
    if eps is None:
        eps = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype)
    return cfm_loss(velocity_model, x_0, s, eps)


# --------------------------------------------------------------------------- conversions between predictions

def x0_from_velocity(x_s: torch.Tensor, v: torch.Tensor, s: float) -> torch.Tensor:
    """x_0 = x_s - s v on the linear path (x_s - s (eps - x_0) = x_0)."""
    return x_s - s * v


def eps_from_velocity(x_s: torch.Tensor, v: torch.Tensor, s: float) -> torch.Tensor:
    """eps = x_s + (1 - s) v on the linear path."""
    return x_s + (1 - s) * v


def velocity_from_eps(x_s: torch.Tensor, eps: torch.Tensor, s: float) -> torch.Tensor:
    """v = eps - x_0 with x_0 = (x_s - s eps) / (1 - s): v = (eps - x_s) / (1 - s) on the linear path (s < 1)."""
    if not bool((torch.as_tensor(s) < 1).all()):
        raise ValueError(f"velocity_from_eps needs s < 1 (x_0 is not determined by eps at s = 1), got {s}")
    return (eps - x_s) / (1 - s)


def velocity_from_x0(x_s: torch.Tensor, x0: torch.Tensor, s: float) -> torch.Tensor:
    """v = (x_s - x_0) / s on the linear path (s > 0)."""
    if not bool((torch.as_tensor(s) > 0).all()):
        raise ValueError(f"velocity_from_x0 needs s > 0, got {s}")
    return (x_s - x0) / s


def score_from_velocity(x_s: torch.Tensor, v: torch.Tensor, s: float) -> torch.Tensor:
    """grad log p_s(x_s) = -E[eps | x_s] / s = -(x_s + (1 - s) v) / s: the marginal std of the linear path is s."""
    if not bool((torch.as_tensor(s) > 0).all()):
        raise ValueError(f"score_from_velocity needs s > 0, got {s}")
    return -eps_from_velocity(x_s, v, s) / s


def vp_to_linear(alpha_bar) -> tuple[float, float]:
    """(c, s) that map DDPM's x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps onto the linear path.

    c x_t = (1 - s) x_0 + s eps with c = 1 / (sqrt(alpha_bar) + sqrt(1 - alpha_bar)) and
    s = sqrt(1 - alpha_bar) c: both paths have the same signal-to-noise ratio (1 - s)^2 / s^2 = alpha_bar / (1 - alpha_bar).
    """
    a, b = math.sqrt(float(alpha_bar)), math.sqrt(1 - float(alpha_bar))
    return 1 / (a + b), b / (a + b)


def alpha_bar_of_flow_time(s: float) -> float:
    """The alpha_bar with the same SNR as flow time s: alpha_bar = (1 - s)^2 / ((1 - s)^2 + s^2)."""
    return (1 - s) ** 2 / ((1 - s) ** 2 + s ** 2)


def flow_time_grid_for_ddim(schedule: NoiseSchedule, steps: int, spacing: str = "trailing") -> list[float]:
    """The flow times s(t) of DDIM's timesteps (``ddim.ddim_timesteps``), then s = 0: Euler on this grid is DDIM."""
    taus = ddim.ddim_timesteps(steps, schedule.T, spacing)
    return [vp_to_linear(schedule.alpha_bar[t])[1] for t in taus] + [0.0]


def ddpm_velocity(eps_model: Callable, schedule: NoiseSchedule) -> VelocityFn:
    """The velocity of a DDPM-trained eps_theta(x_t, t) on the linear path: its probability-flow ODE in flow time.

    At flow time s take the timestep t with the same SNR (interpolated in log-SNR between the table's entries,
    exact at s = s(t) of ``vp_to_linear``), read eps = eps_theta(x_s / c, t) (c x_t = x_s) and return
    v = (eps - x_s) / (1 - s) (``velocity_from_eps``). Euler steps of dx/ds = v on the grid
    ``flow_time_grid_for_ddim`` reproduce DDIM (eta = 0) exactly, scaled by c: Euler in flow time s of the rescaled
    state x / (sqrt(alpha_bar) + sqrt(1 - alpha_bar)) is DDIM. Euler in the VP SDE's time (notebook 05) is not.
    """
    log_snr = torch.log(schedule.snr).numpy()[::-1].copy()  # increasing, for np.interp
    timesteps = np.arange(schedule.T)[::-1].astype(np.float64)

    def velocity(x_s: torch.Tensor, s: float) -> torch.Tensor:
        s = float(s)
        if not 0 < s < 1:
            raise ValueError(f"the DDPM model's velocity is defined for 0 < s < 1, got {s}")
        t = float(np.interp(2 * math.log((1 - s) / s), log_snr, timesteps))
        t = round(t) if abs(t - round(t)) < 1e-6 else t
        alpha_bar = alpha_bar_of_flow_time(s)
        c = 1 / (math.sqrt(alpha_bar) + math.sqrt(1 - alpha_bar))
        with torch.no_grad():
            eps = eps_model(x_s / c, torch.full((x_s.shape[0],), t, dtype=torch.float32))
        return velocity_from_eps(x_s, eps, s)
    return velocity


# --------------------------------------------------------------------------- samplers

def flow_time_grid(steps: int) -> list[float]:
    """steps + 1 evenly spaced flow times from s = 1 (noise) down to s = 0 (data)."""
    steps = validate.positive_int("steps", steps)
    return np.linspace(1.0, 0.0, steps + 1).tolist()


def euler_step(v: torch.Tensor, x_s: torch.Tensor, s: float, s_next: float) -> torch.Tensor:
    """One Euler step of dx/ds = v(x, s): x_{s_next} = x_s + (s_next - s) v (s_next < s: towards the data)."""
    return x_s + (s_next - s) * v


def _sample(velocity: VelocityFn, grid: list[float], x: torch.Tensor, method: str, keep_path: bool,
            progress: bool):
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    path = [(grid[0], x.clone())] if keep_path else []
    nfe = 0
    for s, s_next in tqdm(list(zip(grid, grid[1:])), desc=f"flow {method}, {len(grid) - 1} steps",
                          disable=not progress, leave=False):
        d_1 = velocity(x, s)
        nfe += 1
        x_euler = euler_step(d_1, x, s, s_next)
        if method == "euler":
            x = x_euler
        else:  # Heun: average the slopes at both ends of the interval (2 evaluations a step)
            d_2 = velocity(x_euler, s_next)
            nfe += 1
            x = euler_step(0.5 * (d_1 + d_2), x, s, s_next)
        if keep_path:
            path.append((s_next, x.clone()))
    return x, {"nfe": nfe, "path": path}


@torch.no_grad()
def flow_sample(velocity: VelocityFn, shape: tuple, steps: int = 50, method: str = "euler", seed: int = 0,
                x_1: torch.Tensor | None = None, grid: list[float] | None = None, keep_path: bool = False,
                progress: bool = False):
    """Integrate dx/ds = v(x, s) from s = 1 (x_1 ~ N(0, I), or the given x_1) to s = 0 with Euler or Heun.

    Euler costs ``steps`` velocity evaluations, Heun 2 steps (the velocity is defined at s = 0, so unlike the
    PF-ODE of notebook 05 no step is left to Euler). ``grid`` replaces the uniform grid (from 1 down to 0).
    """
    gen = torch.Generator().manual_seed(seed)
    x = ddim.initial_noise(shape, gen, x_1)
    return _sample(velocity, grid or flow_time_grid(steps), x, method, keep_path, progress)


def unet_velocity(unet, labels: torch.Tensor, guidance_scale: float = 1.0) -> VelocityFn:
    """v(x, s) from the digits flow UNet for ``labels``; with guidance_scale w != 1 the CFG combination
    v_null + w (v_y - v_null) (label NULL_LABEL = 10 is the unconditional model)."""
    labels = validate.as_tensor("labels", labels).long()

    def velocity(x: torch.Tensor, s: float) -> torch.Tensor:
        t = timestep(s, len(x))
        if guidance_scale == 1.0:
            return unet(x, t, class_labels=labels).sample
        null = torch.full_like(labels, unet.config.num_class_embeds - 1)
        both = unet(torch.cat([x, x]), torch.cat([t, t]), class_labels=torch.cat([labels, null])).sample
        v_y, v_null = both.chunk(2)
        return v_null + guidance_scale * (v_y - v_null)
    return velocity


def mlp_velocity(model) -> VelocityFn:
    """v(x, s) from a 2D TimeMLP trained with the CFM loss (timestep TIME_SCALE * s)."""
    return lambda x, s: model(x, timestep(s, len(x)))


# --------------------------------------------------------------------------- reflow and straightness

@torch.no_grad()
def reflow_pairs(velocity: VelocityFn, n: int, steps: int = 50, method: str = "heun", seed: int = 0,
                 dim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_0, eps): noise eps paired with the model's own sample x_0 = ODE(eps), for one round of reflow
    (Liu et al. 2023, Algorithm 1): retraining with ``random_cfm_loss(model, x_0, eps=eps)`` straightens the paths."""
    eps = torch.randn((n, dim), generator=torch.Generator().manual_seed(seed))
    x_0, _ = flow_sample(velocity, (n, dim), steps, method, x_1=eps)
    return x_0, eps


def straightness(path: list[tuple[float, torch.Tensor]]) -> float:
    """Mean distance of a path's points from its chord: mean over samples and points of
    || x(s) - ((1 - s) x(0) + s x(1)) ||. Zero for straight paths run at constant speed.

    ``path`` is [(s, x), ...] from s = 1 to s = 0, as ``flow_sample(keep_path=True)`` returns it.
    """
    if len(path) < 2:
        raise ValueError("a path needs at least two points")
    (s_first, x_1), (s_last, x_0) = path[0], path[-1]
    if not (s_first == 1.0 and s_last == 0.0):
        raise ValueError(f"the path must run from s = 1 to s = 0, got {s_first} to {s_last}")
    deviations = [(x - ((1 - s) * x_0 + s * x_1)).flatten(1).norm(dim=1).mean() for s, x in path]
    return float(torch.stack(deviations).mean())


# --------------------------------------------------------------------------- against diffusers

def shift_time(s, shift: float = 1.0):
    """diffusers' (and Stable Diffusion 3's) time shift s' = shift s / (1 + (shift - 1) s): shift > 1 spends more
    of the steps near the noise. shift = 1 leaves the grid alone."""
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * s / (1 + (shift - 1) * s)


def diffusers_scheduler(steps: int, shift: float = 1.0, grid: list[float] | None = None):
    """diffusers' FlowMatchEulerDiscreteScheduler set to the workbook's grid (``flow_time_grid(steps)`` without its
    final 0, which diffusers appends), so that its ``step`` can be compared with ``euler_step``.

    Its conventions: its sigmas are our flow times s (1 = noise, 0 = data, the same direction as here), its
    timesteps are 1000 sigma (our ``timestep``); its default grid (``set_timesteps(steps)``) ends at
    sigma = 1/1000 before the jump to 0, and ``shift`` bends the grid by ``shift_time`` (SD3 uses 3.0).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=int(TIME_SCALE), shift=shift)
    sigmas = (grid or flow_time_grid(steps))[:-1]
    scheduler.set_timesteps(sigmas=np.array(sigmas, dtype=np.float32))
    return scheduler
