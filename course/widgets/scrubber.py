"""The timestep scrubber over frames rendered once and cached: the forward process (02) and a reverse trajectory (03)."""
from __future__ import annotations

from typing import Callable, Sequence

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from .. import forward, validate
from . import display
from ..plotting import clamp_to_box, figure_to_png, image_grid, scatter2d, to_display


class TimestepScrubber:
    """An IntSlider with Play over precomputed frames, swapped in the browser.

    ``frames`` is any sequence (tensors, tuples...); ``render(frame, index)`` returns a
    matplotlib Figure. Every frame is rendered to PNG once, when the scrubber is built, and sent to the
    page once: the slider is linked in the browser (``jslink``) to a ``Stack`` of the images and of their
    labels, so a move swaps the shown image without a round trip to the kernel. It reacts at once in a
    live demo, and keeps reacting while the kernel is busy with another cell.
    ``labels`` names each frame on the slider's readout (for example its timestep).
    """

    def __init__(self, frames: Sequence, render: Callable[[object, int], Figure], labels=None,
                 description: str = "frame", interval_ms: int = 150, dpi: int = 72):
        if len(frames) == 0:
            raise ValueError("frames must hold at least one frame")
        if labels is not None and len(labels) != len(frames):
            raise ValueError(f"labels has {len(labels)} entries for {len(frames)} frames")
        self.frames = list(frames)
        self.labels = [str(label) for label in labels] if labels is not None else None
        self.description = description
        self.render_count = 0
        self.pngs = []
        for i, frame in enumerate(tqdm(self.frames, desc="rendering frames", leave=False,
                                       disable=len(self.frames) < 10)):
            self.pngs.append(figure_to_png(render(frame, i), dpi=dpi))
            self.render_count += 1
        last = len(self.frames) - 1
        self.slider = widgets.IntSlider(value=0, min=0, max=last, description=description,
                                        continuous_update=True, readout=self.labels is None)
        self.play = widgets.Play(value=0, min=0, max=last, interval=interval_ms, description="play")
        widgets.jslink((self.play, "value"), (self.slider, "value"))
        self.images = [widgets.Image(value=png, format="png") for png in self.pngs]
        self.image_stack = widgets.Stack(self.images, selected_index=0)
        widgets.jslink((self.slider, "value"), (self.image_stack, "selected_index"))
        self.readouts = [widgets.Label(value=label) for label in self.labels or []]
        self.readout_stack = widgets.Stack(self.readouts, selected_index=0 if self.readouts else None)
        if self.readouts:
            widgets.jslink((self.slider, "value"), (self.readout_stack, "selected_index"))
        self.widget = widgets.VBox([widgets.HBox([self.play, self.slider, self.readout_stack]), self.image_stack])
        display.settle()

    @property
    def index(self) -> int:
        return self.slider.value

    @property
    def image(self) -> widgets.Image:
        """The Image widget of the frame the slider is on."""
        return self.images[self.slider.value]

    @property
    def readout(self) -> widgets.Label:
        """The label of the frame the slider is on (an empty Label when the scrubber has no labels)."""
        return self.readouts[self.slider.value] if self.readouts else widgets.Label()

    def show_frame(self, index: int):
        """Move to frame ``index`` (nothing is rendered: the page swaps to an image it already has)."""
        self.slider.value = index

    def static_html(self) -> str:
        """The scrubber for the rendered site: every frame in the page, swapped by a range input."""
        return display.static_scrubber_html(self.pngs, self.labels, self.description)

    def _ipython_display_(self):
        display.show(self)


def forward_process_scrubber(x_0, schedule, timesteps, seed: int = 0) -> TimestepScrubber:
    """Scrub x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps over ``timesteps``.

    ``x_0`` is one image (C, H, W) in [-1, 1] or a point cloud (N, 2). Each frame shows x_t,
    the histogram of its values against N(0, 1), and where t sits on the alpha_bar and SNR curves.
    """
    x_0 = validate.floating("x_0", x_0)
    points = x_0.dim() == 2 and x_0.shape[1] == 2
    if not points and not (x_0.dim() == 3 and x_0.shape[0] in (1, 3)):
        raise ValueError(f"x_0 must be one image (C, H, W) or points (N, 2), got shape {tuple(x_0.shape)}")
    ts = [int(validate.timesteps("timesteps", t, schedule.T)[0]) for t in timesteps]
    batch = x_0 if points else x_0[None]
    frames = [x.squeeze(0) if not points else x for x in forward.trajectory(schedule, batch, ts, seed)]
    alpha_bar, snr = schedule.alpha_bar.numpy(), schedule.snr.numpy()
    gauss_x = np.linspace(-4, 4, 200)
    gauss_y = np.exp(-gauss_x ** 2 / 2) / np.sqrt(2 * np.pi)

    def render(x_t, i):
        t = ts[i]
        fig = Figure(figsize=(9, 2.8))
        ax_img, ax_hist, ax_curve = fig.subplots(1, 3)
        if points:
            scatter2d(x_t, ax=ax_img, title=f"x_t at t = {t}", lim=4)
        else:
            img = to_display(x_t)[0]
            ax_img.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax_img.set_axis_off()
            ax_img.set_title(f"x_t at t = {t}")
        ax_hist.hist(x_t.flatten().numpy(), bins=60, range=(-4, 4), density=True, color="tab:blue", alpha=0.7)
        ax_hist.plot(gauss_x, gauss_y, "k--", lw=1, label="N(0, 1)")
        ax_hist.set_ylim(0, 1.2)
        ax_hist.set_title("values of x_t")
        ax_hist.legend(fontsize=11, loc="upper right", handlelength=1.5)
        ax_curve.plot(alpha_bar, color="tab:blue")
        ax_curve.set_ylabel("alpha_bar_t", color="tab:blue")
        ax_snr = ax_curve.twinx()
        ax_snr.semilogy(snr, color="tab:orange")
        ax_snr.set_ylabel("SNR(t)", color="tab:orange")
        ax_curve.axvline(t, color="k", lw=1)
        ax_curve.set_title(f"alpha_bar = {alpha_bar[t]:.3g}, SNR = {snr[t]:.3g}", fontsize=10)
        ax_curve.set_xlabel("t")
        fig.tight_layout()
        return fig

    return TimestepScrubber(frames, render, labels=[f"t = {t}" for t in ts], description="t")


def reverse_process_scrubber(frames: dict, lim: float = 3.5, ncols: int = 5) -> TimestepScrubber:
    """Scrub a DDPM reverse trajectory: x_t beside the model's predicted x_0, from t = T-1 down to 0.

    ``frames`` maps t to (x_t, x0_pred), as returned by ``ddpm.ddpm_sample(..., keep=...)``:
    images (B, C, H, W) show as two grids, points (B, 2) as two scatter plots. Predicted x_0 points
    outside [-lim, lim]^2 (nearly all of them at t = T-1) are drawn on the frame's edge, in red, and counted
    in the title; the frames themselves are left as they are.
    """
    if not frames:
        raise ValueError("frames is empty: pass keep=(...) to ddpm.ddpm_sample to record timesteps")
    ts = sorted(frames, reverse=True)

    def render(pair, i):
        x_t, x0_pred = pair
        t = ts[i]
        if x_t.dim() == 2 and x_t.shape[1] == 2:
            fig = Figure(figsize=(6.4, 3.2))
            ax_t, ax_0 = fig.subplots(1, 2)
            scatter2d(x_t, ax=ax_t, title=f"x_t at t = {t}", lim=lim)
            inside = (x0_pred.abs() <= lim).all(dim=1)
            clamped, outside = clamp_to_box(x0_pred, lim)
            scatter2d(clamped[inside], ax=ax_0, lim=lim * 1.05)
            ax_0.set_title("predicted x_0" + (f"\n{outside}/{len(x0_pred)} off the plot (red, on its edge)"
                                              if outside else ""), fontsize=10)
            if outside:
                ax_0.scatter(*clamped[~inside].T.numpy(), s=3, color="tab:red")
            fig.tight_layout()
            return fig
        fig = Figure(figsize=(min(len(x_t), ncols) * 1.1 * 2 + 0.4, 1.1 * -(-len(x_t) // ncols) + 0.5))
        left, right = fig.subfigures(1, 2)
        image_grid(x_t, ncols=ncols, size=1.0, title=f"x_t at t = {t}", fig=left)
        image_grid(x0_pred, ncols=ncols, size=1.0, title="predicted x_0", fig=right)
        return fig

    return TimestepScrubber([frames[t] for t in ts], render, labels=[f"t = {t}" for t in ts], description="t")
