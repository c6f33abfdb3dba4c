"""Notebook 10's LoRA explorer: the adapter's scale from 0 (the base model) past 1 (the fine-tuned one)."""
from __future__ import annotations

import io
import time

import torch
from torch import nn

from .. import validate
from ..lora import IDENTIFIER_LABEL, frame_score, lora_layers_or_fail, sample_digits, set_lora_scale
from ..models import NULL_LABEL, NUM_DIGIT_CLASSES
from ..plotting import grid_png
from . import display


def label_name(label: int) -> str:
    """What a class label asks for: a digit, the null label, or the identifier [V]."""
    return {NULL_LABEL: "null", IDENTIFIER_LABEL: "[V]"}.get(int(label), str(int(label)))


def labelled_grid_png(images: torch.Tensor, captions, ncols: int, scale: int = 5) -> bytes:
    """``grid_png`` with a caption strip above each row: every image gets its label written over it."""
    from PIL import Image, ImageDraw

    grid = Image.open(io.BytesIO(grid_png(images, ncols, scale)))
    h, w = images.shape[-2:]
    strip = 12
    nrows = -(-len(images) // ncols)
    out = Image.new(grid.mode, (grid.width, grid.height + nrows * strip), 255)
    draw = ImageDraw.Draw(out)
    for row in range(nrows):
        top = row * ((h + 1) * scale + strip)
        out.paste(grid.crop((0, row * (h + 1) * scale, grid.width, (row + 1) * (h + 1) * scale)), (0, top + strip))
        for col in range(ncols):
            i = row * ncols + col
            if i < len(captions):
                left = (1 + col * (w + 1)) * scale
                draw.text((left + 2, top + 1), str(captions[i]), fill=0)
    if nrows * (h + 1) * scale < grid.height:  # the grid's last border line
        out.paste(grid.crop((0, nrows * (h + 1) * scale, grid.width, grid.height)),
                  (0, nrows * ((h + 1) * scale + strip)))
    buffer = io.BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()


class LoRAScaleExplorer:
    """A LoRA-scale slider over fixed noise: 0 = the base model, 1 = the adapted one, 1.5 = exaggerated.

    The samples of each slider value are drawn (DDIM, eta = 0, ``steps`` steps, from the same x_T and labels) the
    first time it is chosen, then kept, so going back is instant; ``latencies`` records each new value's seconds.
    The adapter runs unmerged, so changing the scale needs no weight update.
    """

    def __init__(self, unet: nn.Module, labels=None, steps: int = 10, seed: int = 0, scale_max: float = 1.5,
                 scale_step: float = 0.25, ncols: int | None = None, classifier=None):
        import ipywidgets as widgets

        self.layers = lora_layers_or_fail(unet)
        if any(layer.merged for layer in self.layers.values()):
            raise ValueError("the model's LoRA layers are merged: unmerge_lora(model) first, the slider scales them")
        self.unet, self.steps, self.ncols, self.classifier = unet, validate.positive_int("steps", steps), ncols, \
            classifier
        self.labels = torch.arange(NUM_DIGIT_CLASSES) if labels is None else validate.as_tensor("labels", labels).long()
        self.ncols = ncols or len(self.labels)
        self.x_T = torch.randn((len(self.labels), 1, 16, 16), generator=torch.Generator().manual_seed(seed))
        self.samples, self.pngs, self.latencies = {}, {}, []
        self.slider = widgets.FloatSlider(value=1.0, min=0.0, max=scale_max, step=scale_step, description="LoRA scale",
                                          continuous_update=False, readout_format=".2f")
        self.readout = widgets.Label()
        self.image = widgets.Image(format="png")
        self.slider.observe(lambda change: self.show(), names="value")
        self.show()
        self.widget = widgets.VBox([self.slider, self.readout, self.image])
        display.settle()  # the warm-up's garbage is collected now, not on the first move

    def sample(self, scale: float) -> torch.Tensor:
        key = round(float(scale), 6)
        if key not in self.samples:
            set_lora_scale(self.unet, key)
            try:
                self.samples[key] = sample_digits(self.unet, self.labels, x_T=self.x_T, steps=self.steps)
            finally:
                set_lora_scale(self.unet, 1.0)
        return self.samples[key]

    def show(self):
        start = time.perf_counter()
        key = round(float(self.slider.value), 6)
        if key not in self.pngs:
            self.pngs[key] = labelled_grid_png(self.sample(key), [label_name(y) for y in self.labels], self.ncols)
            self.latencies.append(time.perf_counter() - start)
        self.image.value = self.pngs[key]
        text = f"scale = {key:g}: " + ("the base model" if key == 0 else "the adapted model" if key == 1 else
                                       "a blend" if key < 1 else "exaggerated")
        digits = self.labels < NUM_DIGIT_CLASSES
        if self.classifier is not None and digits.any():
            with torch.no_grad():
                predicted = self.classifier(self.samples[key][digits]).argmax(1)
            text += (f"; the classifier reads {int((predicted == self.labels[digits]).sum())}/{int(digits.sum())} "
                     f"digits as asked")
        identifier = self.labels == IDENTIFIER_LABEL
        if identifier.any():
            text += f"; frame score of [V]: {frame_score(self.samples[key][identifier]).mean().item():.2f}"
        self.readout.value = text + f"  ({len(self.pngs)} scales cached)"

    def _ipython_display_(self):
        display.show(self)
