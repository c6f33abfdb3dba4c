"""Checkers for notebook 12: the conditional flow matching loss, and the velocity of an eps-prediction."""
from __future__ import annotations

import torch

from .. import flow, models
from .core import ExerciseFailed, call_student, compare, passed


class _ToyVelocityModel(torch.nn.Module):
    """A fixed, seeded v_theta(x_s, s) that depends on both arguments and records its calls."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(dim, dim, generator=gen) / dim ** 0.5)
        self.time = torch.nn.Parameter(torch.randn(8, dim, generator=gen))
        self.calls = []

    def forward(self, x_s, s):
        self.calls.append((x_s.detach().clone(), torch.as_tensor(s).detach().clone()))
        flat = x_s.flatten(1)
        s = torch.as_tensor(s, dtype=torch.float32).reshape(-1).expand(len(flat))
        out = flat @ self.weight.to(flat.dtype) + (models.sinusoidal_embedding(10 * s, 8) @ self.time).to(flat.dtype)
        return out.reshape(x_s.shape)


def _cfm_cases(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for i, (shape, dtype) in enumerate([((32, 2), torch.float32), ((8, 1, 4, 4), torch.float32),
                                        ((16, 2), torch.float64), ((1, 3), torch.float32)]):
        s = torch.rand(shape[0], generator=gen, dtype=torch.float64).to(dtype)
        cases.append((f"x_0 of shape {shape}, {dtype}, random s", torch.randn(shape, generator=gen, dtype=dtype), s,
                      torch.randn(shape, generator=gen, dtype=dtype), _ToyVelocityModel(int(torch.tensor(shape[1:]).prod()), seed + i)))
    x_0 = torch.randn(4, 2, generator=gen)
    cases.append(("s = 0 and s = 1 in one batch", x_0, torch.tensor([0.0, 1.0, 0.0, 1.0]),
                  torch.randn(4, 2, generator=gen), _ToyVelocityModel(2, seed + 9)))
    return cases


def _cfm_variants(model, x_0, s, eps):
    """The loss of each usual mistake, with the hint that names it."""
    b = s.reshape(-1, *[1] * (x_0.dim() - 1))
    x_s, reversed_path = (1 - b) * x_0 + b * eps, b * x_0 + (1 - b) * eps

    def loss(x, target, time=s):
        with torch.no_grad():
            return ((model(x, time) - target) ** 2).mean()
    return [
        (loss(x_s, x_0 - eps), "the target has the wrong sign: d x_s / ds = eps - x_0 (the path runs from the data "
         "at s = 0 to the noise at s = 1)"),
        (loss(reversed_path, x_0 - eps), "the path is reversed: x_s = (1 - s) x_0 + s eps, so s = 0 is the data and "
         "s = 1 the noise, and the target is eps - x_0"),
        (loss(reversed_path, eps - x_0), "x_s = (1 - s) x_0 + s eps: you swapped the weights of x_0 and eps"),
        (loss(x_s, eps), "the target eps is L_simple's (notebook 03); flow matching regresses the velocity eps - x_0"),
        (loss(x_s, x_0), "the target is the velocity eps - x_0, not x_0"),
        (loss(x_s, eps - x_0, 1 - s), "call velocity_model(x_s, s) with the time s itself, not 1 - s"),
        (((model(x_s, s).detach() - (eps - x_0)) ** 2).sum(), "take the mean over the batch and every dimension, not "
         "the sum"),
    ]


def check_cfm_loss(student_cfm_loss) -> None:
    """Check ``cfm_loss(velocity_model, x_0, s, eps)``: its value, its gradient, and what it called the model with."""
    name = "cfm_loss"
    cases = _cfm_cases()
    for case, x_0, s, eps, model in cases:
        model.calls.clear()
        got = call_student(name, student_cfm_loss, case, model, x_0.clone(), s.clone(), eps.clone())
        if not isinstance(got, torch.Tensor):
            raise ExerciseFailed(name, f"return the loss as a torch.Tensor (so it can be backpropagated), got "
                                       f"{type(got).__name__}\nwhile checking: {case}")
        if got.dim() != 0:
            raise ExerciseFailed(name, f"the loss should be one number (a 0-d tensor), got shape {tuple(got.shape)}: "
                                       f"take the mean over the batch and every dimension\nwhile checking: {case}")
        if not model.calls:
            raise ExerciseFailed(name, f"your loss never called velocity_model: call velocity_model(x_s, s)"
                                       f"\nwhile checking: {case}")
        expected = flow.cfm_loss(model, x_0, s, eps)
        if not torch.isclose(got.detach().double(), expected.detach().double(), rtol=1e-4, atol=1e-6):
            hint = next((h for value, h in _cfm_variants(model, x_0, s, eps)
                         if torch.isclose(got.detach().double(), value.double(), rtol=1e-4, atol=1e-6)), None)
            raise ExerciseFailed(name, f"loss is {got.item():.6g}, expected {expected.item():.6g}"
                                       + (f"\nhint: {hint}" if hint else "") + f"\nwhile checking: {case}")
        if not got.requires_grad:
            raise ExerciseFailed(name, "the loss carries no gradient: do not call .item(), .detach() or "
                                       f"torch.no_grad() inside the loss\nwhile checking: {case}")
        grads = torch.autograd.grad(got, list(model.parameters()), allow_unused=True)
        refs = torch.autograd.grad(expected, list(model.parameters()))
        for (param, _), g, ref in zip(model.named_parameters(), grads, refs):
            if g is None:
                raise ExerciseFailed(name, f"the loss does not depend on the model's parameter {param!r}"
                                           f"\nwhile checking: {case}")
            compare(name, f"gradient of the loss with respect to {param}", g, ref, case)
    passed(name, len(cases), "2D and image batches, float32 and float64, s = 0 and 1, batch of one, gradients")


def _velocity_variants(x_s, eps, s):
    return [
        ((x_s - eps) / (1 - s), "the sign is flipped: v = eps - x_0, and x_0 = (x_s - s eps) / (1 - s)"),
        (eps - x_s, "divide by 1 - s: x_0 = (x_s - s eps) / (1 - s), so v = eps - x_0 = (eps - x_s) / (1 - s)"),
        ((eps - x_s) / s, "divide by 1 - s, not s: on this path x_s = (1 - s) x_0 + s eps (the weight of eps is s, "
         "that of x_0 is 1 - s), so x_0 = (x_s - s eps) / (1 - s)"),
        (eps - (x_s - s * eps), "x_0 = (x_s - s eps) / (1 - s): the division by 1 - s is missing"),
    ]


def check_velocity_from_eps(student_velocity_from_eps) -> None:
    """Check ``velocity_from_eps(x_s, eps, s) -> v`` on the linear path, for a float s."""
    name = "velocity_from_eps"
    gen = torch.Generator().manual_seed(5)
    cases = []
    for s in (0.999, 0.9, 0.5, 0.2, 0.01, 0.0):
        for shape, dtype in (((16, 2), torch.float32), ((3, 1, 4, 4), torch.float64)):
            cases.append((f"s = {s}, x_s of shape {shape}, {dtype}", s, torch.randn(shape, generator=gen, dtype=dtype),
                          torch.randn(shape, generator=gen, dtype=dtype)))
    for case, s, x_s, eps in cases:
        got = call_student(name, student_velocity_from_eps, case, x_s.clone(), eps.clone(), s)
        expected = flow.velocity_from_eps(x_s, eps, s)
        hint = ""
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            hint = next((f"\nhint: {h}" for value, h in _velocity_variants(x_s, eps, s)
                         if torch.allclose(got.double(), value.double(), atol=1e-5, rtol=1e-4)
                         and not torch.allclose(value.double(), expected.double(), atol=1e-5, rtol=1e-4)), "")
        compare(name, "v", got, expected, case + hint, atol=None if s < 0.99 else 1e-3, rtol=None if s < 0.99 else 1e-3)
    # a round trip: the velocity of the true eps is eps - x_0
    x_0, eps = torch.randn(8, 2, generator=gen), torch.randn(8, 2, generator=gen)
    got = call_student(name, student_velocity_from_eps, "x_s on the path of a known x_0", flow.linear_path(x_0, eps, 0.3),
                       eps.clone(), 0.3)
    compare(name, "v", got, eps - x_0, "x_s = 0.7 x_0 + 0.3 eps: v must be eps - x_0", atol=1e-5, rtol=1e-5)
    passed(name, len(cases) + 1, "s from 0.999 to 0, 2D and image shapes, float32 and float64, a known x_0")
