"""Notebook 06's guidance explorer: samples for a digit, a negative digit and a CFG or classifier-guidance scale."""
from __future__ import annotations

import time

import torch

from .. import ddim, validate
from ..guidance import cfg_eps_model
from ..models import NULL_LABEL, NUM_DIGIT_CLASSES
from ..plotting import grid_png
from ..schedules import linear_schedule
from . import display


ANY = "any digit"


NONE = "none"


class GuidanceExplorer:
    """A guidance-scale slider with a class picker and a negative-class picker, for a live demo.

    The noise x_T is drawn once; each (w, class, negative class) is sampled the first time it is chosen (DDIM, eta = 0,
    ``steps`` steps, the conditional and negative passes batched) and kept, so going back is instant.
    ``latencies`` records the seconds each new setting took, sampling and drawing included. The readout gives the
    digit classifier's verdict on the samples.
    """

    def __init__(self, unet, n: int = 8, steps: int = 10, seed: int = 0, w_max: float = 8.0, w_step: float = 0.5,
                 classifier=None, ncols: int = 8):
        import ipywidgets as widgets

        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.unet, self.steps, self.ncols = unet, validate.positive_int("steps", steps), ncols
        self.schedule, self.classifier = linear_schedule(), classifier
        self.x_T = torch.randn((n, 1, 16, 16), generator=torch.Generator().manual_seed(seed))
        self.samples, self.pngs, self.latencies = {}, {}, []
        digits = [str(d) for d in range(NUM_DIGIT_CLASSES)]
        self.w = widgets.FloatSlider(value=0.0, min=0.0, max=w_max, step=w_step, description="w",
                                     continuous_update=False, readout_format=".1f")
        self.label = widgets.Dropdown(options=[ANY] + digits, value="3", description="class")
        self.negative = widgets.Dropdown(options=[NONE] + digits, value=NONE, description="avoid")
        self.readout = widgets.Label()
        self.image = widgets.Image(format="png")
        for control in (self.w, self.label, self.negative):
            control.observe(lambda change: self.show(), names="value")
        self.show()
        self.widget = widgets.VBox([widgets.HBox([self.w, self.label, self.negative]), self.readout, self.image])
        display.settle()  # the warm-up's garbage is collected now, not on the first move

    @staticmethod
    def _label(choice: str) -> int:
        return NULL_LABEL if choice in (ANY, NONE) else int(choice)

    def key(self) -> tuple:
        return round(float(self.w.value), 6), self._label(self.label.value), self._label(self.negative.value)

    def sample(self, w: float, label: int, negative: int) -> torch.Tensor:
        key = (round(float(w), 6), label, negative)
        if key not in self.samples:
            n = len(self.x_T)
            eps_model = cfg_eps_model(self.unet, torch.full((n,), label), key[0],
                                      None if negative == NULL_LABEL else torch.full((n,), negative))
            x, _ = ddim.ddim_sample(eps_model, self.schedule, tuple(self.x_T.shape), steps=self.steps,
                                        x_T=self.x_T, progress=False)
            self.samples[key] = x.clamp(-1, 1)
        return self.samples[key]

    def show(self):
        start = time.perf_counter()
        key = self.key()
        if key not in self.pngs:
            self.pngs[key] = grid_png(self.sample(*key), self.ncols)
            self.latencies.append(time.perf_counter() - start)
        self.image.value = self.pngs[key]
        text = f"w = {key[0]:g} (lambda = {1 + key[0]:g}), class {self.label.value}, avoid {self.negative.value}"
        if self.classifier is not None:
            with torch.no_grad():
                predicted = self.classifier(self.samples[key]).argmax(1).tolist()
            text += f"; the classifier reads: {' '.join(map(str, predicted))}"
        self.readout.value = text + f"  ({len(self.pngs)} settings cached)"

    def _ipython_display_(self):
        display.show(self)
