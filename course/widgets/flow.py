"""Notebook 12's explorer: a number-of-steps slider over 2D trajectories of the diffusion ODE and the flow ODE,
side by side, every frame integrated and rendered once."""
from __future__ import annotations

from typing import Callable

import torch
from matplotlib.figure import Figure

from .. import metrics
from .scrubber import TimestepScrubber


def flow_steps_scrubber(samplers: dict[str, Callable[[int], list]], steps=(1, 2, 4, 8, 16, 32),
                        reference: torch.Tensor | None = None, shown: int = 60, lim: float = 3.2) -> TimestepScrubber:
    """A TimestepScrubber over numbers of steps; each frame shows every sampler's paths at that many steps.

    ``samplers`` maps a panel title to ``path(steps) -> [(s, x), ...]`` from noise to data (the same noise for
    every sampler). The first ``shown`` paths are drawn as lines, every endpoint as a dot; with ``reference``
    (points of the data distribution) each panel's title gives the endpoints' energy distance to it.
    """
    if not samplers:
        raise ValueError("samplers must name at least one sampler")
    steps = list(steps)
    frames = [{name: path(n) for name, path in samplers.items()} for n in steps]

    def render(frame, index):
        fig = Figure(figsize=(3.3 * len(frame), 3.4))
        axes = fig.subplots(1, len(frame), squeeze=False)[0]
        for ax, (name, path) in zip(axes, frame.items()):
            points = torch.stack([x for _, x in path])  # (points on the path, N, 2)
            if reference is not None:
                ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.85")
            for i in range(min(shown, points.shape[1])):
                ax.plot(points[:, i, 0], points[:, i, 1], lw=0.7, c="tab:blue", alpha=0.6)
            ax.scatter(points[-1, :, 0], points[-1, :, 1], s=3, c="tab:red", zorder=3)
            title = f"{name}\n{steps[index]} step{'s' if steps[index] > 1 else ''}"
            if reference is not None:
                title += f", energy distance {metrics.energy_distance(points[-1], reference):.3f}"
            ax.set_title(title, fontsize=8)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        return fig

    return TimestepScrubber(frames, render, labels=[f"{n} steps" for n in steps], description="steps")
