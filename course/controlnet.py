"""ControlNet in miniature (notebook 09): a trainable copy of a frozen UNet's encoder, joined by zero convolutions.

The copy reads the noisy image plus an embedded spatial condition (here a digit's mask); its features pass
through 1x1 convolutions initialised to zero and are added to the frozen base UNet's skip connections and
middle block. At step 0 the sum adds nothing, so the controlled model is exactly the base model.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoints, datasets, ddim, fitting, models, validate
from .forward import q_sample
from .metrics import mask_iou
from .schedules import get_schedule


def zero_conv(channels: int) -> nn.Conv2d:
    """A 1x1 convolution with weight a = 0 and bias b = 0: it outputs zeros, yet its gradients are not zero."""
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def add_control(down_residuals, mid_sample, control_down, control_mid):
    """Inject the control: add each control residual to the base UNet's skip connection of the same index,
    and the control's middle output to the base's middle-block output."""
    if len(down_residuals) != len(control_down):
        raise ValueError(f"the base UNet has {len(down_residuals)} skip connections but the control gives "
                         f"{len(control_down)}")
    return tuple(r + c for r, c in zip(down_residuals, control_down)), mid_sample + control_mid


class ConditionEmbedding(nn.Module):
    """A few convolutions from the condition image to the width of the UNet's first features (diffusers'
    ControlNetConditioningEmbedding); each extra entry of ``channels`` halves the resolution. Its last
    convolution starts at zero too when ``zero_init``."""

    def __init__(self, conditioning_channels: int, out_channels: int, channels=(16,), zero_init: bool = True):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(channels, channels[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)
        if zero_init:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(condition))
        for block in self.blocks:
            h = F.silu(block(h))
        return self.conv_out(h)


def time_and_class_embedding(unet, x_t, t, class_labels=None):
    """The embedding every ResNet block of ``unet`` (or of its copy) receives: time, plus class if it has one."""
    t = validate.as_tensor("t", t).long().reshape(-1).expand(x_t.shape[0])
    emb = unet.time_embedding(unet.time_proj(t).to(x_t.dtype))
    if unet.class_embedding is not None:
        if class_labels is None:
            raise ValueError("this UNet is class-conditional: pass class_labels (NULL_LABEL = 10 for none)")
        emb = emb + unet.class_embedding(class_labels)
    return emb


def _residual_channels(config) -> list[int]:
    """The channels of each skip connection a diffusers UNet's encoder emits, in order (conv_in first)."""
    channels = [config.block_out_channels[0]]
    for i, width in enumerate(config.block_out_channels):
        channels += [width] * config.layers_per_block
        if i < len(config.block_out_channels) - 1:
            channels.append(width)  # the downsampler's output
    return channels


class ControlNet(nn.Module):
    """The trainable copy of ``base_unet``'s encoder (conv_in, time and class embeddings, down blocks, middle
    block) with a condition embedding and one zero convolution per skip connection, plus one for the middle.

    Works for a UNet2DModel (the digits model) and a UNet2DConditionModel (cross-attention, as in SD).
    ``zero_init=False`` gives the ablation: the same network with ordinary (random) initialisation.
    """

    def __init__(self, base_unet: nn.Module, conditioning_channels: int = 1, embedding_channels=(16,),
                 zero_init: bool = True):
        super().__init__()
        config = base_unet.config
        self.config = {"conditioning_channels": conditioning_channels, "embedding_channels": list(embedding_channels),
                       "zero_init": zero_init}
        for part in ("conv_in", "time_proj", "time_embedding", "class_embedding", "down_blocks", "mid_block"):
            setattr(self, part, copy.deepcopy(getattr(base_unet, part)))
        self.condition_embedding = ConditionEmbedding(conditioning_channels, config.block_out_channels[0],
                                                      embedding_channels, zero_init)
        make = zero_conv if zero_init else (lambda c: nn.Conv2d(c, c, kernel_size=1))
        self.zero_convs = nn.ModuleList(make(c) for c in _residual_channels(config))
        self.mid_zero_conv = make(config.block_out_channels[-1])
        self.requires_grad_(True)

    def encode(self, x_t, t, condition, class_labels=None, encoder_hidden_states=None):
        """The copy's features before the zero convolutions: (skip connections, middle-block output)."""
        emb = time_and_class_embedding(self, x_t, t, class_labels)
        h = self.conv_in(x_t) + self.condition_embedding(condition)
        residuals = [h]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                h, res = block(hidden_states=h, temb=emb)
            residuals += res
        if getattr(self.mid_block, "has_cross_attention", False):
            h = self.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
        else:
            h = self.mid_block(h, emb)
        return residuals, h

    def forward(self, x_t, t, condition, class_labels=None, encoder_hidden_states=None, scale: float = 1.0):
        """The control residuals, times the conditioning scale: (one per skip connection, one for the middle)."""
        channels = self.config["conditioning_channels"]
        factor = 2 ** (len(self.condition_embedding.blocks) // 2)  # each extra embedding stage halves the size
        size = (x_t.shape[-2] * factor, x_t.shape[-1] * factor)
        if condition.dim() != 4 or condition.shape[1] != channels or tuple(condition.shape[-2:]) != size:
            raise ValueError(f"the condition must have shape (N, {channels}, {size[0]}, {size[1]}) for x_t of shape "
                             f"{tuple(x_t.shape)}, got {tuple(condition.shape)}")
        residuals, mid = self.encode(x_t, t, condition, class_labels, encoder_hidden_states)
        down = tuple(scale * conv(r) for conv, r in zip(self.zero_convs, residuals))
        return down, scale * self.mid_zero_conv(mid)


def unet_with_control(unet, x_t, t, class_labels=None, control=None):
    """A UNet2DModel's forward pass (diffusers' own, step by step) with the control residuals added to its skip
    connections and middle block by ``add_control``. ``control=None`` is the base model."""
    emb = time_and_class_embedding(unet, x_t, t, class_labels)
    h = unet.conv_in(x_t)
    down_residuals = (h,)
    for block in unet.down_blocks:
        h, res = block(hidden_states=h, temb=emb)
        down_residuals += res
    h = unet.mid_block(h, emb)
    if control is not None:
        down_residuals, h = add_control(down_residuals, h, *control)
    for block in unet.up_blocks:
        res, down_residuals = down_residuals[-len(block.resnets):], down_residuals[:-len(block.resnets)]
        h = block(h, res, emb)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


def controlled_eps_model(unet, controlnet, condition, class_labels, scale: float = 1.0):
    """eps_model(x_t, t) for the samplers: the frozen base UNet steered by the ControlNet at ``scale``.
    ``controlnet=None`` or scale 0 is the base model alone."""
    def eps_model(x_t, t):
        if controlnet is None or scale == 0:
            return unet_with_control(unet, x_t, t, class_labels)
        control = controlnet(x_t, t, condition, class_labels, scale=scale)
        return unet_with_control(unet, x_t, t, class_labels, control)
    return eps_model


# --------------------------------------------------------------------------- data, training, adherence


def digit_masks(images: torch.Tensor) -> torch.Tensor:
    """The condition: where a digit's ink is (pixel > 0 in [-1, 1]), as a {0, 1} mask."""
    return (images > 0).float()


def control_loss(unet, controlnet, x_0, condition, labels, schedule, generator=None) -> torch.Tensor:
    """L_simple through the controlled model; only the ControlNet has trainable parameters."""
    t = torch.randint(0, schedule.T, (len(x_0),), generator=generator)
    eps = torch.randn(x_0.shape, generator=generator)
    x_t = q_sample(schedule, x_0, t, eps)
    control = controlnet(x_t, t, condition, labels)
    return F.mse_loss(unet_with_control(unet, x_t, t, labels, control), eps)


def train_controlnet(unet, steps: int, batch_size: int = 64, lr: float = 1e-3, zero_init: bool = True,
                     label_dropout: float = 0.5, seed: int = 0, progress: bool = True, callback=None,
                     pairs: int | None = None):
    """Train a ControlNet for the frozen ``unet`` on (mask, digit) pairs of the training digits.

    Returns (controlnet, losses). Half of the labels are dropped to the null label, so the control alone
    must carry the shape. ``callback(step, controlnet)``, if given, is called before the first step and after
    each one (step = optimiser steps taken), e.g. to score a learning curve; it runs in eval mode, without grad.
    ``pairs`` keeps only that many training pairs (a seeded random subset, drawn with ``seed``): the little
    paired data of the paper's setting. None uses all 1,500.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    unet = unet.eval().requires_grad_(False)
    controlnet = ControlNet(unet, zero_init=zero_init)
    images, labels = datasets.digits("train")
    if pairs is not None:
        pairs = validate.positive_int("pairs", pairs)
        if pairs > len(images):
            raise ValueError(f"pairs = {pairs} but the training split has {len(images)} digits")
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:pairs]
        images, labels = images[keep], labels[keep]
    masks, schedule = digit_masks(images), get_schedule("linear")

    def report(step):
        if callback is not None:
            controlnet.eval()
            with torch.no_grad():
                callback(step, controlnet)
            controlnet.train()

    def batch_loss(step):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        y = labels[idx].clone()
        y[torch.rand(batch_size, generator=gen) < label_dropout] = models.NULL_LABEL
        return control_loss(unet, controlnet, images[idx], masks[idx], y, schedule, gen)

    report(0)
    losses = fitting.fit(controlnet.parameters(), batch_loss, steps, lr,
                         desc="ControlNet" + ("" if zero_init else " (no zero convs)"), mininterval=2,
                         progress=progress, to_stdout=False, after_step=lambda step: report(step + 1))
    return controlnet.eval(), losses


@torch.no_grad()
def sample_with_control(unet, controlnet, condition, labels, scale: float = 1.0, steps: int = 20, seed: int = 0,
                        x_T=None) -> torch.Tensor:
    """DDIM samples (eta = 0) of the controlled model, one per condition, clamped to [-1, 1]."""
    condition = validate.floating("condition", condition)
    if condition.dim() != 4 or condition.shape[1:] != (1, 16, 16):
        raise ValueError(f"the condition must be masks of shape (N, 1, 16, 16), got {tuple(condition.shape)}")
    labels = validate.as_tensor("labels", labels).long().reshape(-1).expand(len(condition))
    eps_model = controlled_eps_model(unet, controlnet, condition, labels, scale)
    x_0, _ = ddim.ddim_sample(eps_model, get_schedule("linear"), tuple(condition.shape), steps=steps, seed=seed,
                                  x_T=x_T, progress=False)
    return x_0.clamp(-1, 1)


def adherence(unet, controlnet, condition, labels, scale: float = 1.0, steps: int = 20, seed: int = 0) -> dict:
    """Mean IoU between each condition mask and the ink of the sample drawn for it, and the samples."""
    samples = sample_with_control(unet, controlnet, condition, labels, scale, steps, seed)
    scores = mask_iou(digit_masks(samples), condition)
    return {"iou": scores.mean().item(), "iou_per_sample": scores, "samples": samples}


@torch.no_grad()
def distance_from_base(unet, controlnet, n: int = 64, seed: int = 0) -> float:
    """Relative change of the predicted noise, |eps_control - eps_base| / |eps_base|, over held-out digits
    noised to random t: 0 means the ControlNet leaves the base model untouched."""
    gen = torch.Generator().manual_seed(seed)
    images, labels = datasets.digits("test")
    images, labels = images[:n], labels[:n]
    schedule = get_schedule("linear")
    t = torch.randint(0, schedule.T, (n,), generator=gen)
    x_t = q_sample(schedule, images, t, torch.randn(images.shape, generator=gen))
    base = unet_with_control(unet, x_t, t, labels)
    steered = unet_with_control(unet, x_t, t, labels, controlnet(x_t, t, digit_masks(images), labels))
    return ((steered - base).norm() / base.norm()).item()


COPIED_PARTS = ("conv_in", "time_embedding", "class_embedding", "down_blocks", "mid_block")


@torch.no_grad()
def copy_drift(unet, controlnet) -> float:
    """How far the trainable copy Theta_c has moved from the pretrained weights it was copied from:
    |Theta_c - Theta| / |Theta| over every copied tensor (the encoder, its embeddings, the middle block).
    0 at step 0; the zero convolutions and the condition embedding are not counted (they have no original)."""
    squared_change, squared_norm = 0.0, 0.0
    for part in COPIED_PARTS:
        if getattr(unet, part, None) is None:
            continue
        base = dict(getattr(unet, part).named_parameters())
        for name, p in getattr(controlnet, part).named_parameters():
            squared_change += (p - base[name]).pow(2).sum().item()
            squared_norm += base[name].pow(2).sum().item()
    return (squared_change / squared_norm) ** 0.5


# --------------------------------------------------------------------------- conditions for the widget


def parametric_mask(kind: str, size: int = 16, thickness: float = 2.0, tilt: float = 0.0) -> torch.Tensor:
    """A drawn condition: 'ring', 'bar', 'cross' or 'blob', with a stroke thickness (pixels) and a tilt (degrees)."""
    kinds = ("ring", "bar", "cross", "blob")
    if kind not in kinds:
        raise ValueError(f"kind must be one of {kinds}, got {kind!r}")
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    angle = torch.tensor(tilt * torch.pi / 180)
    u, v = xx * torch.cos(angle) + yy * torch.sin(angle), -xx * torch.sin(angle) + yy * torch.cos(angle)
    half = thickness / 2
    if kind == "ring":
        r = torch.sqrt((u / 0.62) ** 2 + v ** 2)
        mask = (r - size * 0.32).abs() <= half
    elif kind == "bar":
        mask = (u.abs() <= half) & (v.abs() <= size * 0.38)
    elif kind == "cross":
        mask = ((u.abs() <= half) | (v.abs() <= half)) & (u.abs() <= size * 0.35) & (v.abs() <= size * 0.35)
    else:
        mask = (u / 0.7) ** 2 + v ** 2 <= (size * 0.3) ** 2
    return mask.float()[None, None]


def load_digits_controlnet(name: str = "digits_controlnet", directory: Path | None = None) -> ControlNet:
    """The shipped ControlNet of notebook 09 (or, by name, its ablation without zero convolutions)."""

    def build(config):
        config["embedding_channels"] = tuple(config["embedding_channels"])
        return ControlNet(models.load_digits_unet(), **config)  # the base always comes from the shipped checkpoints

    return checkpoints.load_model(name, build, directory, frozen=True)
