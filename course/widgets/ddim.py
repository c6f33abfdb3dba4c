"""Notebook 04's DDIM explorer: number of steps, eta and the trajectory of one sample."""
from __future__ import annotations

from typing import Callable

import ipywidgets as widgets
from matplotlib.figure import Figure

from ..plotting import figure_to_png, image_grid
from . import display


class DDIMExplorer:
    """Pick the number of DDIM steps and eta, then scrub that trajectory (x_t beside the predicted x_0).

    The noise x_T is fixed, so changing the steps shows the same digits drawn with coarser or finer sub-sequences
    (for eta = 0). A trajectory is sampled the first time its (steps, eta) is chosen and kept; each frame is
    rendered to PNG once, when first shown. ``sample(steps, eta, x_T)`` returns (x_0, frames) as
    ``ddim.ddim_sample(..., keep="all")`` does; the last frame shows the sample x_0 itself.
    """

    def __init__(self, sample: Callable, x_T, steps_choices=(5, 10, 20, 50), eta_choices=(0.0, 0.5, 1.0),
                 ncols: int = 5, dpi: int = 72):
        if not steps_choices or not eta_choices:
            raise ValueError("give at least one choice of steps and one of eta")
        self._sample, self.x_T, self.ncols, self.dpi = sample, x_T, ncols, dpi
        self.trajectories, self.pngs = {}, {}
        self.sample_count = self.render_count = 0
        self.steps = widgets.Dropdown(options=list(steps_choices), value=steps_choices[0], description="steps")
        self.eta = widgets.ToggleButtons(options=[(f"eta = {e:g}", e) for e in eta_choices], value=eta_choices[0])
        self.slider = widgets.IntSlider(value=0, min=0, max=0, description="step", readout=False)
        self.readout = widgets.Label()
        self.image = widgets.Image(format="png")
        for control in (self.steps, self.eta):
            control.observe(self._on_setting, names="value")
        self.slider.observe(lambda change: self.show(), names="value")
        self._on_setting(None)
        self.prerender(self.steps.value, self.eta.value)  # warm: the first scrub after Run All only swaps images
        self.widget = widgets.VBox([widgets.HBox([self.steps, self.eta]),
                                    widgets.HBox([self.slider, self.readout]), self.image])
        display.settle()  # the warm-up's garbage is collected now, not on the first move

    def trajectory(self, steps: int, eta: float) -> list:
        """[(t, x_t, predicted x_0), ...] from t = T-1 down, sampled once per (steps, eta)."""
        key = (steps, eta)
        if key not in self.trajectories:
            x_0, frames = self._sample(steps, eta, self.x_T)
            self.trajectories[key] = [(t, *frames[t]) for t in sorted(frames, reverse=True)] + [(-1, x_0, x_0)]
            self.sample_count += 1
        return self.trajectories[key]

    def _on_setting(self, change):
        frames = self.trajectory(self.steps.value, self.eta.value)
        at_end = self.slider.value == self.slider.max
        self.slider.max = len(frames) - 1
        self.slider.value = self.slider.max if at_end else min(self.slider.value, self.slider.max)
        self.show()

    def frame_png(self, steps: int, eta: float, index: int) -> bytes:
        """PNG of frame ``index`` of the (steps, eta) trajectory, rendered the first time it is asked for."""
        key = (steps, eta, index)
        if key not in self.pngs:
            t, x_t, x0_pred = self.trajectory(steps, eta)[index]
            self.pngs[key] = figure_to_png(self._render(t, x_t, x0_pred), dpi=self.dpi)
            self.render_count += 1
        return self.pngs[key]

    def prerender(self, steps: int, eta: float):
        """Render every frame of the (steps, eta) trajectory now; the widget does it for its first setting when it is
        built, so scrubbing right after Run All swaps images (other settings render each frame when first shown)."""
        for index in range(len(self.trajectory(steps, eta))):
            self.frame_png(steps, eta, index)

    def show(self):
        key = (self.steps.value, self.eta.value, self.slider.value)
        t = self.trajectory(*key[:2])[key[2]][0]
        self.image.value = self.frame_png(*key)
        self.readout.value = f"after {key[2]} of {self.slider.max} steps: " + (f"t = {t}" if t >= 0 else "x_0")

    def _render(self, t, x_t, x0_pred) -> Figure:
        fig = Figure(figsize=(min(len(x_t), self.ncols) * 2.2 + 0.4, 1.1 * -(-len(x_t) // self.ncols) + 0.5))
        left, right = fig.subfigures(1, 2)
        image_grid(x_t.clamp(-3, 3), ncols=self.ncols, size=1.0, title=f"x_t at t = {t}" if t >= 0 else "x_0",
                   fig=left)
        image_grid(x0_pred.clamp(-1, 1), ncols=self.ncols, size=1.0,
                   title="predicted x_0" if t >= 0 else "the sample", fig=right)
        return fig

    def _ipython_display_(self):
        display.show(self)
