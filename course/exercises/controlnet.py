"""Checkers for notebook 09: the zero convolution, and injecting the control residuals into the base UNet."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import controlnet
from ..models import load_digits_unet
from .core import ExerciseFailed, call_student, compare, passed


def _conv_parts(name, layer, channels, case):
    """The layer's weight and bias, after checking it is a channels -> channels 1x1 convolution."""
    if not isinstance(layer, nn.Module):
        raise ExerciseFailed(name, f"zero_conv(channels) should return an nn.Module (an nn.Conv2d), got "
                                   f"{type(layer).__name__}\nwhile checking: {case}")
    weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
    if not isinstance(weight, torch.Tensor):
        raise ExerciseFailed(name, f"the layer has no .weight: build it as nn.Conv2d(channels, channels, "
                                   f"kernel_size=1)\nwhile checking: {case}")
    if weight.dim() != 4:
        raise ExerciseFailed(name, f"the weight has shape {tuple(weight.shape)}: a convolution over feature maps "
                                   f"(B, C, H, W) has a weight (C_out, C_in, k, k); use nn.Conv2d, not nn.Linear"
                                   f"\nwhile checking: {case}")
    if tuple(weight.shape[:2]) != (channels, channels):
        raise ExerciseFailed(name, f"the weight has shape {tuple(weight.shape)}: the zero convolution maps "
                                   f"{channels} channels to {channels} channels (the skip connection it is added "
                                   f"to has the same width)\nwhile checking: {case}")
    if tuple(weight.shape[2:]) != (1, 1):
        raise ExerciseFailed(name, f"the kernel is {weight.shape[2]}x{weight.shape[3]}: a zero convolution is "
                                   f"1x1 (kernel_size=1), a per-pixel a x + b that mixes channels only"
                                   f"\nwhile checking: {case}")
    if isinstance(layer, nn.Conv2d) and (layer.stride != (1, 1) or layer.padding not in ((0, 0), "valid")
                                         or layer.dilation != (1, 1) or layer.groups != 1):
        raise ExerciseFailed(name, f"use the defaults stride=1, padding=0, groups=1 (got stride={layer.stride}, "
                                   f"padding={layer.padding}, groups={layer.groups}): the output must keep the "
                                   f"input's size and mix all channels\nwhile checking: {case}")
    if not isinstance(bias, torch.Tensor):
        raise ExerciseFailed(name, "the layer has no bias: Z(c; a, b) = a c + b needs one (leave bias=True)"
                                   f"\nwhile checking: {case}")
    return weight, bias


def check_zero_conv(student_zero_conv) -> None:
    """Check ``zero_conv(channels)``: a trainable 1x1 convolution channels -> channels with weight and bias zero,
    whose output is zero and whose weight and bias still get gradients."""
    name = "zero_conv"
    gen = torch.Generator().manual_seed(0)
    cases = [(4, (2, 4, 5, 5)), (32, (3, 32, 16, 16)), (64, (2, 64, 4, 4)), (1, (1, 1, 3, 7))]
    for channels, shape in cases:
        case = f"zero_conv({channels}) on feature maps of shape {shape}"
        layer = call_student(name, student_zero_conv, case, channels)
        weight, bias = _conv_parts(name, layer, channels, case)
        if not (weight.requires_grad and bias.requires_grad):
            frozen = [n for n, p in (("weight", weight), ("bias", bias)) if not p.requires_grad]
            raise ExerciseFailed(name, f"the {' and the '.join(frozen)} {'are' if len(frozen) > 1 else 'is'} frozen "
                                       f"(requires_grad=False): the zero "
                                       f"convolution is what the ControlNet trains, so it must stay trainable"
                                       f"\nwhile checking: {case}")
        w_nonzero, b_nonzero = weight.detach().abs().max() > 0, bias.detach().abs().max() > 0
        if w_nonzero and b_nonzero:
            raise ExerciseFailed(name, "weight and bias are random (nn.Conv2d's default initialisation): set both "
                                       "to zero (nn.init.zeros_), so that the ControlNet adds nothing at step 0"
                                       f"\nwhile checking: {case}")
        if w_nonzero:
            raise ExerciseFailed(name, "the weight is not zero: initialise it with nn.init.zeros_(conv.weight)"
                                       f"\nwhile checking: {case}")
        if b_nonzero:
            raise ExerciseFailed(name, "the weight is zero but the bias is not: nn.Conv2d gives its bias random "
                                       "values too; set it to zero as well (nn.init.zeros_(conv.bias)), or every "
                                       f"output pixel is shifted by b\nwhile checking: {case}")
        x = torch.randn(shape, generator=gen)
        out = call_student(name, layer, case, x)
        compare(name, "the output at initialisation", out, torch.zeros(shape), case + "; a = 0 and b = 0, so "
                "Z(x) = 0", atol=0.0, rtol=0.0)
        # The point of the exercise: the output is zero, yet a and b get gradients.
        upstream = torch.randn(shape, generator=gen)
        if not out.requires_grad:
            raise ExerciseFailed(name, "the output carries no gradient: do not wrap the layer in torch.no_grad() "
                                       f"or detach it\nwhile checking: {case}")
        grad_w, grad_b = torch.autograd.grad((out * upstream).sum(), [weight, bias], allow_unused=True)
        expected_w = torch.einsum("bohw,bihw->oi", upstream, x)[:, :, None, None]
        expected_b = upstream.sum((0, 2, 3))
        for label, got, expected in [("weight a", grad_w, expected_w), ("bias b", grad_b, expected_b)]:
            if got is None or got.abs().max() == 0:
                raise ExerciseFailed(name, f"the gradient of the {label} is zero: the layer's output must depend "
                                           f"on its own weight and bias (a x + b)\nwhile checking: {case}")
            compare(name, f"the gradient of the {label}", got, expected, case + " with a random upstream gradient",
                    atol=1e-4, rtol=1e-4)
        # With trained values it must be an ordinary 1x1 convolution.
        with torch.no_grad():
            weight.copy_(torch.randn(weight.shape, generator=gen) / channels ** 0.5)
            bias.copy_(torch.randn(bias.shape, generator=gen))
        out = call_student(name, layer, case, x)
        compare(name, "the output with non-zero a and b", out, F.conv2d(x, weight.detach(), bias.detach()),
                case + "; weight and bias set to random values", atol=1e-5, rtol=1e-5)
    passed(name, len(cases), "1x1, channels -> channels, output exactly 0 at init, trainable, non-zero gradients "
                             "of a and b")


def _residual_cases():
    """(description, base skip connections, base middle output, control skip connections, control middle)."""
    gen = torch.Generator().manual_seed(1)
    layouts = [("four skip connections of the same shape (8, 4x4) and a middle (8, 2x2)",
                [(8, 4)] * 4, (8, 2), 3),
               ("the digits UNet's layout: 6 skip connections (32, 16x16) ... (64, 4x4), middle (64, 4x4)",
                [(32, 16), (32, 16), (32, 8), (64, 8), (64, 4), (64, 4)], (64, 4), 2),
               ("one skip connection (4, 3x3), a middle (4, 3x3), batch 1", [(4, 3)], (4, 3), 1)]
    cases = []
    for description, skips, (mid_c, mid_s), batch in layouts:
        def draw(c, s):
            return torch.randn(batch, c, s, s, generator=gen)
        cases.append((description, tuple(draw(c, s) for c, s in skips), draw(mid_c, mid_s),
                      tuple(draw(c, s) for c, s in skips), draw(mid_c, mid_s)))
    return cases


def _all_close(got, expected):
    return (len(got) == len(expected) and all(isinstance(g, torch.Tensor) and g.shape == e.shape and
                                              torch.allclose(g, e, atol=1e-6) for g, e in zip(got, expected)))


def check_add_control(student_fn) -> None:
    """Check ``add_control(down_residuals, mid_sample, control_down, control_mid)`` -> (new skip connections,
    new middle output): each control residual added to the skip connection of the same index, the middle too,
    without changing the base model's tensors in place."""
    name = "add_control"
    cases = _residual_cases()
    for case, down, mid, control_down, control_mid in cases:
        originals = [t.clone() for t in (*down, mid, *control_down, control_mid)]
        result = call_student(name, student_fn, case, down, mid, control_down, control_mid)
        if any(not torch.equal(a, b) for a, b in zip(originals, (*down, mid, *control_down, control_mid))):
            raise ExerciseFailed(name, "an input tensor was changed in place (+= or .add_): return new tensors "
                                       "(r + c). The base UNet's own activations must stay as they were (and "
                                       f"autograd needs them)\nwhile checking: {case}")
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise ExerciseFailed(name, "return a pair: (the new skip connections, the new middle-block output)"
                                       f"\nwhile checking: {case}")
        new_down, new_mid = result
        if not isinstance(new_down, (tuple, list)):
            raise ExerciseFailed(name, f"the skip connections should be returned as a tuple of tensors, got "
                                       f"{type(new_down).__name__}\nwhile checking: {case}")
        if len(new_down) != len(down):
            raise ExerciseFailed(name, f"{len(new_down)} skip connections returned for {len(down)}: add one control "
                                       f"residual to each skip connection\nwhile checking: {case}")
        expected = [r + c for r, c in zip(down, control_down)]
        if not _all_close(new_down, expected):
            if _all_close(new_down, control_down):
                hint = ("the skip connections were replaced by the control residuals: add them (r + c), so the "
                        "base model's own features stay in")
            elif _all_close(new_down, down):
                hint = "the skip connections are unchanged: add each control residual to them"
            elif len(down) > 1 and all(r.shape == c.shape for r, c in zip(down, control_down[::-1])) and \
                    _all_close(new_down, [r + c for r, c in zip(down, control_down[::-1])]):
                hint = ("the control residuals were added in reverse order: control residual i belongs to skip "
                        "connection i (both lists run from the first encoder layer to the last)")
            else:
                hint = "each new skip connection is down_residuals[i] + control_down[i]"
            mismatch = next(i for i, (g, e) in enumerate(zip(new_down, expected))
                            if not (isinstance(g, torch.Tensor) and g.shape == e.shape and torch.allclose(g, e, atol=1e-6)))
            raise ExerciseFailed(name, f"{hint}\nfirst wrong skip connection: index {mismatch}\nwhile checking: {case}")
        for i, (g, e) in enumerate(zip(new_down, expected)):
            compare(name, f"skip connection {i}", g, e, case, atol=1e-6, rtol=1e-6)
        if isinstance(new_mid, torch.Tensor) and new_mid.shape == mid.shape:
            if torch.equal(new_mid, mid):
                raise ExerciseFailed(name, "the middle block's output is unchanged: add control_mid to it as well "
                                           f"(mid_sample + control_mid)\nwhile checking: {case}")
            if torch.equal(new_mid, control_mid):
                raise ExerciseFailed(name, "the middle block's output was replaced by control_mid: add it "
                                           f"(mid_sample + control_mid)\nwhile checking: {case}")
        compare(name, "the middle-block output", new_mid, mid + control_mid, case, atol=1e-6, rtol=1e-6)
    # and in the real UNet: with zero control it is the base model, with a control it is the package's injection
    unet = load_digits_unet()
    gen = torch.Generator().manual_seed(2)
    x_t, t, y = torch.randn(2, 1, 16, 16, generator=gen), torch.tensor([900, 100]), torch.tensor([3, 10])
    net = controlnet.ControlNet(unet, zero_init=False)
    with torch.no_grad():
        control = net(x_t, t, torch.rand(2, 1, 16, 16, generator=gen).round(), y)
        expected = controlnet.unet_with_control(unet, x_t, t, y, control)
        original = controlnet.add_control
        controlnet.add_control = student_fn
        try:
            got = call_student(name, controlnet.unet_with_control, "the digits UNet with a random ControlNet's "
                               "residuals", unet, x_t, t, y, control)
        finally:
            controlnet.add_control = original
    compare(name, "the controlled UNet's eps", got, expected, "the digits UNet with a random (not zero-initialised) "
            "ControlNet's residuals, injected by your add_control", atol=1e-5, rtol=1e-5)
    passed(name, len(cases) + 1, "same order, added not replaced, middle block too, inputs unchanged, and the "
                                 "digits UNet steered by a ControlNet through your function")
