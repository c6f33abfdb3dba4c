"""Notebook 09's ControlNet explorer: a drawn condition, a digit label and the conditioning scale."""
from __future__ import annotations

import time

import torch

from .. import models
from ..controlnet import digit_masks, sample_with_control
from ..metrics import mask_iou
from ..plotting import grid_png
from . import display


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
        display.settle()  # the warm-up's garbage is collected now, not on the first move

    def show(self):
        key = (self.picker.value, float(self.slider.value))
        mask = self.conditions[self.picker.value]
        if key not in self.cache:
            start = time.perf_counter()
            samples = sample_with_control(self.unet, self.controlnet, mask.expand(len(self.x_T), -1, -1, -1),
                                          self.labels, key[1], self.steps, x_T=self.x_T)
            score = mask_iou(digit_masks(samples), mask.expand_as(samples)).mean().item()
            self.cache[key] = (grid_png(samples, ncols=len(samples)), score)
            self.latencies.append(time.perf_counter() - start)
        png, score = self.cache[key]
        self.condition_image.value = grid_png(mask * 2 - 1, ncols=1)
        self.samples_image.value = png
        self.readout.value = f"scale {key[1]:g}: mean IoU of the samples' ink with the mask = {score:.2f}"

    def _ipython_display_(self):
        display.show(self)
