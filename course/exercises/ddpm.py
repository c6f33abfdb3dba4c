"""Checkers for notebook 03: the L_simple loss and the ancestral step (DDPM Algorithms 1 and 2)."""
from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from .. import ddpm, forward, models
from ..schedules import get_schedule
from .core import ExerciseFailed, call_student, compare, passed


class _ToyEpsModel(torch.nn.Module):
    """A fixed, seeded eps_theta(x_t, t) that depends on both arguments, so wrong x_t or wrong t show."""

    def __init__(self, shape: tuple, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        dim = int(torch.tensor(shape).prod())
        self.weight = torch.nn.Parameter(torch.randn(dim, dim, generator=gen) / dim ** 0.5)
        self.time = torch.nn.Parameter(torch.randn(8, dim, generator=gen))
        self.calls = []  # (x_t, t) of every call, so the checker can say what the model was called with

    def forward(self, x_t, t):
        self.calls.append((x_t.detach().clone(), torch.as_tensor(t).detach().clone()))
        flat = x_t.flatten(1)
        out = flat @ self.weight.to(flat.dtype) + (models.sinusoidal_embedding(t, 8) @ self.time).to(flat.dtype)
        return out.reshape(x_t.shape)


def _loss_cases(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    linear, cosine = get_schedule("linear"), get_schedule("cosine")
    cases = []
    for schedule, shape in [(linear, (32, 2)), (cosine, (32, 2)), (linear, (8, 1, 4, 4)), (cosine, (6, 3, 2, 2))]:
        t = torch.randint(0, schedule.T, (shape[0],), generator=gen)
        cases.append((f"{schedule.name} schedule, x_0 of shape {shape}, random t", schedule, shape, t))
    cases.append(("t = 0 and t = T-1 in one batch", linear, (4, 2), torch.tensor([0, 999, 0, 999])))
    cases.append(("batch of one, t = 500", linear, (1, 2), torch.tensor([500])))
    return [(case, schedule, torch.randn(shape, generator=gen), t, torch.randn(shape, generator=gen),
             _ToyEpsModel(shape[1:], seed + i)) for i, (case, schedule, shape, t) in enumerate(cases)]


def check_l_simple(student_l_simple) -> None:
    """Check ``l_simple(eps_model, x_0, t, eps, alpha_bar)``: its value and its gradient."""
    name = "l_simple"
    cases = _loss_cases()
    for case, schedule, x_0, t, eps, model in cases:
        model.calls.clear()
        got = call_student(name, student_l_simple, case, model, x_0.clone(), t.clone(), eps.clone(),
                           schedule.alpha_bar.clone())
        calls = list(model.calls)
        if not isinstance(got, torch.Tensor):
            raise ExerciseFailed(name, f"return the loss as a torch.Tensor (so it can be backpropagated), "
                                       f"got {type(got).__name__}\nwhile checking: {case}")
        if got.dim() != 0:
            raise ExerciseFailed(name, f"the loss should be one number (a 0-d tensor), got shape "
                                       f"{tuple(got.shape)}: take the mean over the batch and every dimension"
                                       f"\nwhile checking: {case}")
        expected = ddpm.l_simple(model, schedule, x_0, t, eps)
        _compare_loss(name, got, expected, case + _model_calls_hint(calls, schedule, x_0, t, eps))
        _compare_gradient(name, model, got, expected, case)
    passed(name, len(cases), "2D and image batches, linear and cosine, t = 0 and T-1, batch of one, gradients")


def _model_calls_hint(calls, schedule, x_0, t, eps) -> str:
    """What the student's loss called eps_model with, against what it should have: x_t and the given t."""
    if not calls:
        return "\nyour loss never called eps_model: call eps_model(x_t, t) on the noised x_t"
    lines = [] if len(calls) == 1 else [f"eps_model was called {len(calls)} times; once is enough"]
    x_arg, t_arg = calls[0]
    x_t = forward.q_sample(schedule, x_0, t, eps)
    if x_arg.shape != x_t.shape:
        lines.append(f"eps_model was called on a tensor of shape {tuple(x_arg.shape)}, expected x_t of shape "
                     f"{tuple(x_t.shape)}")
    else:
        named = [(x_0, "x_0 itself: noise it first"), (eps, "eps itself"),
                 (schedule.at(schedule.alpha_bar, t, x_0).to(x_0.dtype) * x_0
                  + (1 - schedule.at(schedule.alpha_bar, t, x_0)).to(x_0.dtype) * eps,
                  "alpha_bar_t x_0 + (1 - alpha_bar_t) eps: take the square roots")]
        match = next((what for ref, what in named if torch.allclose(x_arg.double(), ref.double(), atol=1e-6)), None)
        if match:
            lines.append(f"eps_model was called on {match}")
        elif not torch.allclose(x_arg.double(), x_t.double(), atol=1e-5, rtol=1e-4):
            lines.append(f"eps_model was called on an x_t that differs from sqrt(alpha_bar_t) x_0 + "
                         f"sqrt(1 - alpha_bar_t) eps by up to {(x_arg.double() - x_t.double()).abs().max():.3g}")
    if t_arg.shape != t.shape or not torch.equal(t_arg.long(), t):
        lines.append(f"eps_model was called with t = {_short_list(t_arg)}; the given t is {_short_list(t)}")
    if not lines:
        lines.append("eps_model was called with the right x_t and t: the difference is in the loss you formed "
                     "from its output (compare it with eps, squared, averaged)")
    return "".join(f"\n{line}" for line in lines)


def _short_list(t: torch.Tensor, most: int = 6) -> str:
    values = t.reshape(-1).tolist()
    return "[" + ", ".join(str(v) for v in values[:most]) + (", ...]" if len(values) > most else "]")


def _compare_loss(name, got, expected, case):
    if not torch.isclose(got.detach().double(), expected.detach().double(), rtol=1e-4, atol=1e-6):
        ratio = got.item() / expected.item() if expected.item() else float("nan")
        hint = ""
        if abs(ratio - round(ratio)) < 1e-3 and round(ratio) > 1:
            hint = "\nhint: the ratio is a whole number: take the mean over every dimension, not a sum"
        raise ExerciseFailed(name, f"loss is {got.item():.6g}, expected {expected.item():.6g} "
                                   f"(ratio {ratio:.4g}){hint}\nwhile checking: {case}")


def _compare_gradient(name, model, got, expected, case):
    if not got.requires_grad:
        raise ExerciseFailed(name, "the loss carries no gradient: do not call .item(), .detach() or "
                                   f"torch.no_grad() inside the loss\nwhile checking: {case}")
    grads_got = torch.autograd.grad(got, list(model.parameters()), allow_unused=True)
    grads_ref = torch.autograd.grad(expected, list(model.parameters()))
    for (param_name, _), g, ref in zip(model.named_parameters(), grads_got, grads_ref):
        if g is None:
            raise ExerciseFailed(name, f"the loss does not depend on the model's parameter {param_name!r}: "
                                       f"call eps_model(x_t, t)\nwhile checking: {case}")
        compare(name, f"gradient of the loss with respect to {param_name}", g, ref, case)


def _diffusers_scheduler() -> DDPMScheduler:
    """DDPMScheduler as notebook 03 uses it: textbook equations (no clipping), alpha_bar kept in float64."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    scheduler.alphas_cumprod = torch.cumprod(1 - scheduler.betas.double(), 0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def _step_cases(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for t in (999, 500, 100, 10, 1, 0):
        for shape in [(16, 2), (4, 1, 8, 8)]:
            cases.append((f"t = {t}, x_t of shape {shape}", t, torch.randn(shape, generator=gen),
                          torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)))
    return cases


def check_ddpm_step(student_ddpm_step) -> None:
    """Check ``ddpm_step(eps, x_t, t, noise, betas) -> x_{t-1}`` against the reference and diffusers."""
    name = "ddpm_step"
    schedule = get_schedule("linear")
    cases = _step_cases()
    for case, t, x_t, eps, noise in cases:
        got = _call_step(name, student_ddpm_step, case, eps.clone(), x_t.clone(), t, noise.clone(),
                         schedule.betas.clone())
        expected = ddpm.ddpm_step(schedule, eps, x_t, t, noise=noise)
        if t == 0 and isinstance(got, torch.Tensor) and got.shape == expected.shape and \
                torch.allclose(got, expected + _sigma(schedule, 0) * noise, atol=1e-5):
            raise ExerciseFailed(name, f"at t = 0 the step returns the mean: add no noise there\nwhile checking: {case}")
        if t == 0 and isinstance(got, torch.Tensor) and got.shape == expected.shape and \
                torch.allclose(got, expected + _wrapped_sigma(schedule) * noise, atol=1e-4):
            raise ExerciseFailed(name, "at t = 0, alpha_bar[t - 1] is alpha_bar[-1], the LAST entry (about 4e-5), "
                                       "so your sigma_0 is about 1 and the last step adds a full unit of noise. "
                                       "alpha_bar_(t-1) at t = 0 is 1 (nothing noised yet), sigma_0 = 0: handle "
                                       f"t = 0 on its own and return the mean\nwhile checking: {case}")
        if t > 0 and not _close(got, expected) and _matches_beta_variance(got, schedule, eps, x_t, t, noise):
            raise ExerciseFailed(name, "you used sigma_t^2 = beta_t; the paper allows it, but this workbook and "
                                       "diffusers' default (variance_type='fixed_small') use beta_tilde_t = "
                                       f"(1 - alpha_bar_(t-1)) / (1 - alpha_bar_t) beta_t\nwhile checking: {case}")
        compare(name, "x_{t-1}", got, expected, case, atol=1e-5, rtol=1e-5)
    scheduler = _diffusers_scheduler()
    for t in (999, 500, 10, 1, 0):
        x_t, eps = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
        theirs = scheduler.step(eps, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t))  # the z diffusers drew
        got = _call_step(name, student_ddpm_step, f"diffusers comparison at t = {t}", eps, x_t, t, noise,
                         schedule.betas.clone())
        compare(name, "x_{t-1}", got, theirs.float(),
                f"against diffusers' DDPMScheduler.step(clip_sample=False) at t = {t}, same noise",
                atol=1e-5, rtol=1e-5)
    passed(name, len(cases) + 5, "t from 999 down to 0, 2D and image shapes, diffusers' DDPMScheduler.step")


def _call_step(name, fn, case, *args):
    """call_student, with a named hint when shapes do not broadcast (t is one int here: no reshape is needed)."""
    try:
        return call_student(name, fn, case, *args)
    except ExerciseFailed as failure:
        if "must match the size of tensor" in failure.message or "broadcast" in failure.message:
            raise ExerciseFailed(name, failure.message + "\nhint: t is one int in ddpm_step, so betas[t] and "
                                       "alpha_bar[t] are single numbers that broadcast against x_t of any shape. "
                                       "If you made a tensor of one value per sample (shape (B,)), reshape it to "
                                       "(B, 1, ..., 1) before multiplying x_t, or index with the int t") from None
        raise


def _wrapped_sigma(schedule) -> float:
    """sigma_0 when alpha_bar_(t-1) is read as alpha_bar[t - 1] = alpha_bar[-1] at t = 0."""
    alpha_bar = schedule.alpha_bar
    return float(((1 - alpha_bar[-1]) / (1 - alpha_bar[0]) * schedule.betas[0]).sqrt())


def _close(got, expected) -> bool:
    return isinstance(got, torch.Tensor) and got.shape == expected.shape and \
        torch.allclose(got.double(), expected.double(), atol=1e-5, rtol=1e-5)


def _matches_beta_variance(got, schedule, eps, x_t, t, noise) -> bool:
    if not isinstance(got, torch.Tensor) or got.shape != x_t.shape:
        return False
    mean = ddpm.model_mean(schedule, x_t, t, eps)
    return torch.allclose(got.double(), (mean + _sigma(schedule, t) * noise).double(), atol=1e-5)


def _sigma(schedule, t: int) -> float:
    return float(ddpm.reverse_variance(schedule, "beta")[t].sqrt())
