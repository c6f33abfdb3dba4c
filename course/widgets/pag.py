"""Notebook 07's PAG explorer: unconditional samples over the guidance scale s and the perturbed layers."""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from .. import ddim
from ..pag import DEFAULT_LAYERS, LAYERS, attention_modules, gradient_magnitude, guided_eps_model
from ..plotting import grid_png
from ..schedules import linear_schedule
from . import display


class PAGExplorer:
    """A PAG-scale slider and a layer picker over a fixed grid of unconditional samples (fixed x_T, DDIM eta = 0).

    Each (s, layers) is sampled the first time it is chosen and kept, so moving back is instant; with
    ``precompute`` the first layer choice is sampled at every s when the widget is built. ``latencies`` records the
    seconds each new setting took (sampling and drawing) after that.
    """

    def __init__(self, unet, n: int = 8, steps: int = 10, seed: int = 0, scales=(0, 0.5, 1, 1.5, 2, 3, 4, 5),
                 layer_choices=None, ncols: int = 8, precompute: bool = True):
        import ipywidgets as widgets

        self.unet, self.steps, self.ncols = unet, steps, ncols
        self.x_T = torch.randn((n, 1, 16, 16), generator=torch.Generator().manual_seed(seed))
        layer_choices = layer_choices or {"mid": ("mid",), "down.4x4": ("down.4x4",), "up.4x4": ("up.4x4",),
                                          "all three": tuple(LAYERS)}
        for layers in layer_choices.values():
            attention_modules(unet, layers)
        self.layer_choices = dict(layer_choices)
        self.samples, self.pngs, self.latencies = {}, {}, []
        self.scale = widgets.SelectionSlider(options=[(f"{v:g}", float(v)) for v in scales], value=float(scales[0]),
                                             description="PAG s", continuous_update=False)
        self.layers = widgets.ToggleButtons(options=list(self.layer_choices), description="layers")
        self.readout = widgets.Label()
        self.image = widgets.Image(format="png")
        self.scale.observe(lambda change: self.show(), names="value")
        self.layers.observe(lambda change: self.show(), names="value")
        if precompute:  # the first layer choice at every s, so the slider answers at once from the start
            for value in tqdm([v for _, v in self.scale.options], desc="PAG widget: precomputing", leave=False):
                self.pngs[self._key(value, self.layers.value)] = grid_png(self.sample(value, self.layers.value),
                                                                           self.ncols)
        self.show()
        self.widget = widgets.VBox([widgets.HBox([self.scale, self.layers]), self.readout, self.image])
        display.settle()  # the warm-up's garbage is collected now, not on the first move

    def _key(self, s: float, layer_name: str) -> tuple:
        return (s, self.layer_choices[layer_name] if s else ())

    def sample(self, s: float, layer_name: str) -> torch.Tensor:
        key = self._key(s, layer_name)
        if key not in self.samples:
            eps_model = guided_eps_model(self.unet, s, key[1] or DEFAULT_LAYERS)
            self.samples[key], _ = ddim.ddim_sample(eps_model, linear_schedule(), tuple(self.x_T.shape),
                                                        steps=self.steps, x_T=self.x_T, progress=False)
        return self.samples[key]

    def show(self):
        start = time.perf_counter()
        s, name = self.scale.value, self.layers.value
        key = self._key(s, name)
        if key not in self.pngs:
            self.pngs[key] = grid_png(self.sample(s, name), self.ncols)
            self.latencies.append(time.perf_counter() - start)
        self.image.value = self.pngs[key]
        x = self.samples[key]
        self.readout.value = (f"s = {s:g}, layers {name}: sharpness {gradient_magnitude(x).mean():.3f} "
                              f"(mean |gradient|), {len(self.pngs)} settings cached")

    def _ipython_display_(self):
        display.show(self)
