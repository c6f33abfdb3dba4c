"""Checkers for notebook 10: a LoRA layer, and merging its update into the base weight."""
from __future__ import annotations

import torch
from torch import nn

from .. import lora
from .core import ExerciseFailed, call_student, compare, passed


def _layer_cases():
    gen = torch.Generator().manual_seed(0)
    cases = []
    # alpha is not a multiple of r in the second and fifth cases: alpha // r (integer division) differs there
    for d_in, d_out, r, alpha, bias in [(6, 5, 2, 4.0, True), (6, 5, 3, 7.0, True), (64, 64, 4, 4.0, True),
                                        (8, 3, 1, 2.0, False), (16, 32, 8, 20.0, True)]:
        base = nn.Linear(d_in, d_out, bias=bias)
        with torch.no_grad():
            base.weight.copy_(torch.randn(d_out, d_in, generator=gen) / d_in ** 0.5)
            if bias:
                base.bias.copy_(torch.randn(d_out, generator=gen))
        x = torch.randn(3, 7, d_in, generator=gen)  # (batch, tokens, features), as the attention layers see it
        A, B = torch.randn(r, d_in, generator=gen), torch.randn(d_out, r, generator=gen)
        cases.append((f"base nn.Linear({d_in}, {d_out}, bias={bias}), r = {r}, alpha = {alpha:g}, "
                      f"x of shape {tuple(x.shape)}", base, r, alpha, x, A, B))
    return cases


def _parameter(name, layer, attr, shape, case):
    value = getattr(layer, attr, None)
    if not isinstance(value, torch.Tensor):
        raise ExerciseFailed(name, f"the layer needs an attribute self.{attr}: an nn.Parameter of shape {shape}"
                                   f"\nwhile checking: {case}")
    if tuple(value.shape) != shape:
        hint = " (transposed?)" if tuple(value.shape) == shape[::-1] else ""
        raise ExerciseFailed(name, f"self.{attr} has shape {tuple(value.shape)}, expected {shape}{hint}: A maps "
                                   f"d_in -> r, B maps r -> d_out, as nn.Linear stores weights (out, in)"
                                   f"\nwhile checking: {case}")
    if not isinstance(value, nn.Parameter):
        raise ExerciseFailed(name, f"self.{attr} is a plain tensor{' with requires_grad=True' if value.requires_grad else ''}"
                                   f": wrap it in nn.Parameter(...), or layer.parameters() does not list it and an "
                                   f"optimiser built from them would never update it\nwhile checking: {case}")
    if not value.requires_grad:
        raise ExerciseFailed(name, f"self.{attr} must be trainable: do not freeze it (requires_grad_(False) is for "
                                   f"the base layer)\nwhile checking: {case}")
    return value


def check_lora_layer(student_class) -> None:
    """Check ``LoRALayer(base, r, alpha)``: shapes, zero-initialised B, frozen base, forward and gradients."""
    name = "LoRALayer"
    cases = _layer_cases()
    for case, base, r, alpha, x, A, B in cases:
        layer = call_student(name, student_class, case, base, r, alpha)
        if not isinstance(layer, nn.Module):
            raise ExerciseFailed(name, f"LoRALayer(...) should build an nn.Module, got {type(layer).__name__}")
        lora_A = _parameter(name, layer, "lora_A", (r, base.in_features), case)
        lora_B = _parameter(name, layer, "lora_B", (base.out_features, r), case)
        if lora_B.detach().abs().max() != 0:
            raise ExerciseFailed(name, "B must start at zero, so that Delta W = B A = 0 and the adapted layer equals "
                                       f"the base layer before any training\nwhile checking: {case}")
        if lora_A.detach().abs().max() == 0:
            raise ExerciseFailed(name, "A must start random (nn.init.kaiming_uniform_ or randn / sqrt(d_in)): with "
                                       "both A and B at zero, neither one ever gets a gradient"
                                       f"\nwhile checking: {case}")
        trainable = {id(p) for p in layer.parameters() if p.requires_grad}
        if trainable != {id(lora_A), id(lora_B)}:
            extra = [n for n, p in layer.named_parameters() if p.requires_grad and id(p) not in
                     (id(lora_A), id(lora_B))]
            raise ExerciseFailed(name, f"only A and B should be trainable, but so are {extra}: freeze the base "
                                       f"layer with base.requires_grad_(False)\nwhile checking: {case}")
        with torch.no_grad():
            expected_start = base(x)
        got = call_student(name, layer, case, x)
        compare(name, "the output before training (B = 0)", got, expected_start, case + "; B = 0, so output = base(x)")
        with torch.no_grad():
            lora_A.copy_(A)
            lora_B.copy_(B)
        got = call_student(name, layer, case, x)
        update = x @ A.T @ B.T
        expected = expected_start + alpha / r * update
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype:
            for wrong, hint in [(expected_start + update, "the update is not scaled: multiply B A x by alpha / r"),
                                (expected_start + alpha * update, "scale the update by alpha / r, not alpha"),
                                (expected_start + r / alpha * update, "the scale is alpha / r, not r / alpha"),
                                (expected_start + (alpha // r) * update, "alpha // r is integer (floor) division: "
                                 "the scale is alpha / r, a fraction when alpha is not a multiple of r"),
                                (alpha / r * update, "add the base layer's output W x + b")]:
                if torch.allclose(got.detach(), wrong, atol=1e-5) and not torch.allclose(wrong, expected, atol=1e-5):
                    raise ExerciseFailed(name, f"{hint}\nwhile checking: {case}, A and B set to random values")
        compare(name, "the output", got, expected, case + ", A and B set to random values", atol=1e-5, rtol=1e-5)
        if not got.requires_grad:
            raise ExerciseFailed(name, "the output carries no gradient: do not detach or use torch.no_grad() in "
                                       f"forward\nwhile checking: {case}")
        grad_A, grad_B = torch.autograd.grad(got.sum(), [lora_A, lora_B], allow_unused=True)
        A_ref, B_ref = A.clone().requires_grad_(True), B.clone().requires_grad_(True)
        ref_A, ref_B = torch.autograd.grad((expected_start + alpha / r * (x @ A_ref.T @ B_ref.T)).sum(), [A_ref, B_ref])
        for label, g, ref in [("A", grad_A, ref_A), ("B", grad_B, ref_B)]:
            if g is None:
                raise ExerciseFailed(name, f"the output does not depend on {label}: use self.lora_A and self.lora_B "
                                           f"in forward\nwhile checking: {case}")
            compare(name, f"the gradient with respect to {label}", g, ref, case, atol=1e-4, rtol=1e-5)
    passed(name, len(cases), "shapes, B = 0 at the start, frozen base, forward with (batch, tokens, features), "
                             "alpha / r, gradients of A and B")


def _merge_cases():
    gen = torch.Generator().manual_seed(1)
    cases = []
    for d_out, d_in, r, alpha, scale in [(5, 6, 2, 4.0, 1.0), (64, 64, 4, 8.0, 0.5), (3, 8, 1, 1.0, 0.0),
                                         (32, 16, 8, 8.0, 1.5), (64, 128, 4, 2.0, 1.0)]:
        cases.append((f"W of shape ({d_out}, {d_in}), r = {r}, alpha = {alpha:g}, scale = {scale:g}",
                      torch.randn(d_out, d_in, generator=gen), torch.randn(r, d_in, generator=gen),
                      torch.randn(d_out, r, generator=gen), alpha, scale))
    return cases


def check_merge(student_merge) -> None:
    """Check ``merge(weight, lora_A, lora_B, alpha, scale)`` -> W + scale (alpha / r) B A, as a new tensor."""
    name = "merge"
    cases = _merge_cases()
    for case, W, A, B, alpha, scale in cases:
        W_in = W.clone()
        got = call_student(name, student_merge, case, W_in, A.clone(), B.clone(), alpha, scale)
        if not torch.equal(W_in, W):
            raise ExerciseFailed(name, "the weight passed in was changed: return a new tensor (W + ...), do not add "
                                       "in place, or the base weight is lost\nwhile checking: " + case)
        expected = lora.merge_weight(W, A, B, alpha, scale)
        r = A.shape[0]
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype and \
                not torch.allclose(got, expected, atol=1e-5):
            for wrong, hint in [(W + alpha / r * B @ A, "multiply the update by scale as well"),
                                (W + scale * alpha * B @ A, "scale the update by alpha / r, not alpha"),
                                (W + scale * B @ A, "the update is scale * (alpha / r) * B @ A"),
                                (scale * alpha / r * B @ A, "return W plus the update, not the update alone")]:
                if torch.allclose(got, wrong, atol=1e-5):
                    raise ExerciseFailed(name, f"{hint}\nwhile checking: {case}")
        compare(name, "the merged weight", got, expected, case, atol=1e-5, rtol=1e-5)
        x = torch.randn(4, W.shape[1], generator=torch.Generator().manual_seed(2))
        layer = lora.LoRALinear(nn.Linear(W.shape[1], W.shape[0], bias=False), r=r, alpha=alpha)
        with torch.no_grad():
            layer.base.weight.copy_(W)
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)
        layer.scale = scale
        with torch.no_grad():
            compare(name, "x @ merged.T (one matrix)", x @ got.T, layer(x), case + ": the merged weight must give "
                    "the same output as the unmerged layer", atol=1e-4, rtol=1e-5)
    passed(name, len(cases), "square and rectangular W, r from 1 to 8, scale 0, 0.5, 1 and 1.5, W left unchanged, "
                             "merged output = unmerged output")
