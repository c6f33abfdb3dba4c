"""Checkers for notebook 09: the zero convolution, the ControlNet's forward pass (its control residuals), and
injecting the control residuals into the base UNet."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import controlnet
from diffusers import UNet2DModel

from ..models import NULL_LABEL, load_digits_unet
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


# --------------------------------------------------------------------------- the ControlNet's forward pass


def _residuals_variant(net, x_t, t, condition, labels, scale, mistake=None):
    """The control residuals, or the result of one typical mistake (to name it in the message)."""
    emb = controlnet.time_and_class_embedding(net, x_t, t, labels)
    h = net.conv_in(x_t)
    if mistake != "no condition":
        h = h + net.condition_embedding(condition)
    residuals = [h] if mistake != "no first residual" else []
    for block in net.down_blocks:
        h, res = block(hidden_states=h, temb=emb)
        residuals += res
    h = net.mid_block(h, emb)
    convs = list(net.zero_convs)[:len(residuals)] if mistake != "no first residual" else list(net.zero_convs)[1:]
    if mistake == "no zero convs":
        return tuple(scale * r for r in residuals), scale * h
    if mistake == "scale inside":
        return tuple(conv(scale * r) for conv, r in zip(convs, residuals)), net.mid_zero_conv(scale * h)
    if mistake == "no scale":
        scale = 1.0
    mid = h if mistake == "no mid conv" else net.mid_zero_conv(h)
    return tuple(scale * conv(r) for conv, r in zip(convs, residuals)), scale * mid


def _random_small_unet(seed):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       num_class_embeds=3, norm_num_groups=4).eval()


def _perturbed_controlnet(unet, seed):
    """A ControlNet of ``unet`` as if trained: random 'zero' convolutions and embedding, and a copy whose weights
    differ from the base's (so that using the base's blocks instead of the copy's is caught)."""
    torch.manual_seed(seed)
    net = controlnet.ControlNet(unet, zero_init=False).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in controlnet.COPIED_PARTS:
            for p in getattr(net, part).parameters():
                p.add_(0.05 * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=gen))
    return net


def check_control_residuals(student_fn) -> None:
    """Check ``control_residuals(net, x_t, t, condition, class_labels, scale)``: the ControlNet's forward pass,
    eq. 2 over the whole encoder: conv_in(x_t) + condition embedding, the copy's down blocks and middle block,
    each feature through its own zero convolution, times the conditioning scale."""
    name = "control_residuals"
    digits_unet = load_digits_unet()
    gen = torch.Generator().manual_seed(3)
    cases = []
    for unet, seed, batch, size, scale, labels in [
            (digits_unet, 0, 2, 16, 1.0, torch.tensor([3, NULL_LABEL])),
            (digits_unet, 1, 3, 16, 0.7, torch.tensor([0, 5, 9])),
            (_random_small_unet(2), 2, 2, 8, 1.5, torch.tensor([1, 2]))]:
        net = _perturbed_controlnet(unet, seed)
        x_t = torch.randn(batch, 1, size, size, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        condition = torch.rand(batch, 1, size, size, generator=gen).round()
        cases.append((f"a ControlNet of {'the digits UNet' if unet is digits_unet else 'a small random UNet2DModel'}"
                      f" ({len(net.zero_convs)} skip connections) with trained-like (non-zero) zero convolutions, "
                      f"x_t of shape {tuple(x_t.shape)}, scale {scale:g}", net, x_t, t, condition, labels, scale))
    hints = {"no condition": "the condition never enters: the copy's input is conv_in(x_t) plus the condition "
                             "embedding of c (eq. 2's x + Z(c; Θ_z1))",
             "no first residual": "the first skip connection is missing: the encoder's first feature, the input "
                                  "convolution's output (condition included), is a skip connection too",
             "no zero convs": "the features are returned without their zero convolutions Z(.; Θ_z2)",
             "scale inside": "the scale multiplies the zero convolution's output, not its input (Z has a bias: "
                             "Z(s h) = s a h + b differs from s Z(h))",
             "no scale": "the conditioning scale is not applied: multiply every residual (and the middle one) by it",
             "no mid conv": "the middle block's output must pass through its own zero convolution (mid_zero_conv)"}
    for case, net, x_t, t, condition, labels, scale in cases:
        with torch.no_grad():
            expected_down, expected_mid = _residuals_variant(net, x_t, t, condition, labels, scale)
        result = call_student(name, student_fn, case, net, x_t, t, condition, labels, scale)
        if not isinstance(result, (tuple, list)) or len(result) != 2 or not isinstance(result[0], (tuple, list)):
            raise ExerciseFailed(name, "return a pair: (a tuple with one control residual per skip connection, the "
                                       f"middle one)\nwhile checking: {case}")
        got_down, got_mid = result
        got_all = [*got_down, got_mid]
        if not all(isinstance(g, torch.Tensor) for g in got_all):
            raise ExerciseFailed(name, f"every residual should be a torch.Tensor\nwhile checking: {case}")
        got_all = [g.detach() for g in got_all]
        for mistake, hint in hints.items():
            with torch.no_grad():
                wrong_down, wrong_mid = _residuals_variant(net, x_t, t, condition, labels, scale, mistake)
            if _all_close(got_all, [*wrong_down, wrong_mid]) and not _all_close(got_all, [*expected_down, expected_mid]):
                raise ExerciseFailed(name, f"{hint}\nwhile checking: {case}")
        if len(got_down) != len(expected_down):
            raise ExerciseFailed(name, f"{len(got_down)} control residuals returned, but the UNet has "
                                       f"{len(expected_down)} skip connections (the input convolution's output, then "
                                       f"every residual each down block returns)\nwhile checking: {case}")
        for i, (g, e) in enumerate(zip(got_down, expected_down)):
            compare(name, f"control residual {i}", g.detach(), e, case + ": use the ControlNet's own (copied) "
                    "blocks, and zero convolution i for skip connection i", atol=1e-5, rtol=1e-4)
        compare(name, "the middle control residual", got_mid.detach(), expected_mid, case, atol=1e-5, rtol=1e-4)
    # gradients must flow into the ControlNet (its zero convolutions), or it cannot be trained
    net, x_t, t, condition, labels = cases[0][1:6]
    net.zero_grad()
    down, mid = call_student(name, student_fn, cases[0][0], net, x_t, t, condition, labels, 1.0)
    if not mid.requires_grad:
        raise ExerciseFailed(name, "the residuals carry no gradient: do not use torch.no_grad() or detach, the "
                                   "ControlNet is trained through them")
    (sum(r.sum() for r in down) + mid.sum()).backward()
    if net.mid_zero_conv.weight.grad is None or net.condition_embedding.conv_in.weight.grad is None:
        raise ExerciseFailed(name, "no gradient reaches the zero convolutions and the condition embedding")
    net.zero_grad()
    passed(name, len(cases) + 1, "condition added to conv_in(x_t), every skip connection through its own zero "
                                 "convolution, the middle one too, scale outside Z, the copy's blocks, two "
                                 "UNet layouts, gradients flow")
