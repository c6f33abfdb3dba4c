"""ControlNet in miniature (notebook 09): a trainable copy of a frozen UNet's encoder, joined by zero convolutions.

The copy reads the noisy image plus an embedded spatial condition (here a digit's mask); its features pass
through 1x1 convolutions initialised to zero and are added to the frozen base UNet's skip connections and
middle block. At step 0 the sum adds nothing, so the controlled model is exactly the base model.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import datasets, ddim, models, validate
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


def iou(mask_a: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of two {0, 1} masks, per image (1 where both are empty)."""
    a, b = mask_a.flatten(1) > 0.5, mask_b.flatten(1) > 0.5
    union = (a | b).sum(1)
    return torch.where(union > 0, (a & b).sum(1) / union.clamp(min=1), torch.ones_like(union, dtype=torch.float))


def control_loss(unet, controlnet, x_0, condition, labels, schedule, generator=None) -> torch.Tensor:
    """L_simple through the controlled model; only the ControlNet has trainable parameters."""
    t = torch.randint(0, schedule.T, (len(x_0),), generator=generator)
    eps = torch.randn(x_0.shape, generator=generator)
    from .forward import q_sample

    x_t = q_sample(schedule, x_0, t, eps)
    control = controlnet(x_t, t, condition, labels)
    return F.mse_loss(unet_with_control(unet, x_t, t, labels, control), eps)


def train_controlnet(unet, steps: int, batch_size: int = 64, lr: float = 1e-3, zero_init: bool = True,
                     label_dropout: float = 0.5, seed: int = 0, progress: bool = True, callback=None):
    """Train a ControlNet for the frozen ``unet`` on (mask, digit) pairs of the training digits.

    Returns (controlnet, losses). Half of the labels are dropped to the null label, so the control alone
    must carry the shape. ``callback(step, controlnet)``, if given, is called before the first step and after
    each one (step = optimiser steps taken), e.g. to score a learning curve; it runs in eval mode, without grad.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    unet = unet.eval().requires_grad_(False)
    controlnet = ControlNet(unet, zero_init=zero_init)
    images, labels = datasets.digits("train")
    masks, schedule = digit_masks(images), get_schedule("linear")
    opt = torch.optim.AdamW(controlnet.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    bar = tqdm(range(steps), desc="ControlNet" + ("" if zero_init else " (no zero convs)"), mininterval=2,
               disable=not progress)
    def report(step):
        if callback is not None:
            controlnet.eval()
            with torch.no_grad():
                callback(step, controlnet)
            controlnet.train()

    report(0)
    for step in bar:
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        y = labels[idx].clone()
        y[torch.rand(batch_size, generator=gen) < label_dropout] = models.NULL_LABEL
        loss = control_loss(unet, controlnet, images[idx], masks[idx], y, schedule, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        report(step + 1)
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
    scores = iou(digit_masks(samples), condition)
    return {"iou": scores.mean().item(), "iou_per_sample": scores, "samples": samples}


@torch.no_grad()
def distance_from_base(unet, controlnet, n: int = 64, seed: int = 0) -> float:
    """Relative change of the predicted noise, |eps_control - eps_base| / |eps_base|, over held-out digits
    noised to random t: 0 means the ControlNet leaves the base model untouched."""
    from .forward import q_sample

    gen = torch.Generator().manual_seed(seed)
    images, labels = datasets.digits("test")
    images, labels = images[:n], labels[:n]
    schedule = get_schedule("linear")
    t = torch.randint(0, schedule.T, (n,), generator=gen)
    x_t = q_sample(schedule, images, t, torch.randn(images.shape, generator=gen))
    base = unet_with_control(unet, x_t, t, labels)
    steered = unet_with_control(unet, x_t, t, labels, controlnet(x_t, t, digit_masks(images), labels))
    return ((steered - base).norm() / base.norm()).item()


def rows_figure(rows: dict, title: str | None = None, size: float = 0.75):
    """A grid with one named row per entry of ``rows`` (name -> (N, 1, H, W) images in [-1, 1]), the names on
    the left: conditions above the samples drawn for them."""
    from matplotlib.figure import Figure

    from .plotting import to_display

    ncols = max(len(images) for images in rows.values())
    height = len(rows) * size + (0.35 if title else 0.05)
    fig = Figure(figsize=(1.6 + ncols * size, height))
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        pixels = to_display(images)
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(pixels):
                ax.imshow(pixels[c, ..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.2, h_pad=0.1, w_pad=0.1, rect=(0, 0, 1, 1 - 0.35 / height if title else 1))
    return fig


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


class ControlNetExplorer:
    """Pick a condition (a held-out digit's mask or a drawn shape) and a conditioning scale; see the samples.

    Each (condition, scale) is sampled once, from the same noise, then kept, so moving back is instant;
    ``latencies`` records the seconds of each new setting.
    """

    def __init__(self, unet, controlnet, conditions: dict, n: int = 8, steps: int = 10, seed: int = 0,
                 scales=(0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)):
        import ipywidgets as widgets

        if not conditions:
            raise ValueError("conditions must name at least one mask")
        self.unet, self.controlnet, self.conditions, self.steps = unet, controlnet, conditions, steps
        self.x_T = torch.randn((n, 1, 16, 16), generator=torch.Generator().manual_seed(seed))
        self.labels = torch.full((n,), models.NULL_LABEL)
        self.cache, self.latencies = {}, []
        self.picker = widgets.Dropdown(options=list(conditions), description="condition")
        self.slider = widgets.SelectionSlider(options=list(scales), value=1.0, description="scale",
                                              continuous_update=False)
        self.condition_image, self.samples_image = widgets.Image(format="png"), widgets.Image(format="png")
        self.readout = widgets.Label()
        for control in (self.picker, self.slider):
            control.observe(lambda change: self.show(), names="value")
        self.show()
        self.widget = widgets.VBox([widgets.HBox([self.picker, self.slider]), self.readout,
                                    widgets.HBox([self.condition_image, self.samples_image])])

    def show(self):
        from .plotting import grid_png

        key = (self.picker.value, float(self.slider.value))
        mask = self.conditions[self.picker.value]
        if key not in self.cache:
            start = time.perf_counter()
            samples = sample_with_control(self.unet, self.controlnet, mask.expand(len(self.x_T), -1, -1, -1),
                                          self.labels, key[1], self.steps, x_T=self.x_T)
            score = iou(digit_masks(samples), mask.expand_as(samples)).mean().item()
            self.cache[key] = (grid_png(samples, ncols=len(samples)), score)
            self.latencies.append(time.perf_counter() - start)
        png, score = self.cache[key]
        self.condition_image.value = grid_png(mask * 2 - 1, ncols=1)
        self.samples_image.value = png
        self.readout.value = f"scale {key[1]:g}: mean IoU of the samples' ink with the mask = {score:.2f}"

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
