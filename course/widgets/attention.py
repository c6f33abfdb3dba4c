"""Notebook 01's explorer: one head's attention weights for one query, at any softmax temperature."""
from __future__ import annotations

import io

import numpy as np
import torch

from .. import validate
from ..attention import softmax_entropy
from . import display


class AttentionExplorer:
    """Pick a head and a query token, and a temperature tau; see softmax(logits / tau) for that query.

    ``logits`` (h, L, S) are scaled logits Q K^T / sqrt(d_k), one (L, S) block per head. Each view is
    drawn the first time it is asked for, over a background rendered once (blitting: a few milliseconds),
    then cached, so the controls react at once.
    """

    def __init__(self, logits, query_labels, key_labels=None, head_names=None,
                 temperatures=(0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0), dpi: int = 90):
        import ipywidgets as widgets

        logits = validate.floating("logits", logits).detach().float()
        if logits.dim() == 2:
            logits = logits[None]
        if logits.dim() != 3:
            raise ValueError(f"logits must have shape (heads, queries, keys), got {tuple(logits.shape)}")
        h, L, S = logits.shape
        key_labels = list(query_labels) if key_labels is None else list(key_labels)
        if len(query_labels) != L or len(key_labels) != S:
            raise ValueError(f"logits have {L} queries and {S} keys, but {len(query_labels)} query labels "
                             f"and {len(key_labels)} key labels")
        self.logits, self.dpi = logits, dpi
        self.query_labels, self.key_labels = [str(x) for x in query_labels], [str(x) for x in key_labels]
        self.head_names = list(head_names) if head_names is not None else [f"head {i}" for i in range(h)]
        if len(self.head_names) != h:
            raise ValueError(f"{len(self.head_names)} head names for {h} heads")
        self.cache: dict = {}
        self.render_count = 0
        self.head = widgets.Dropdown(options=[(name, i) for i, name in enumerate(self.head_names)], value=0,
                                     description="head")
        self.query = widgets.Dropdown(options=[(f"{i}: {t}", i) for i, t in enumerate(self.query_labels)],
                                      value=0, description="query")
        self.temperature = widgets.SelectionSlider(options=[(f"{t:g}", float(t)) for t in temperatures],
                                                   value=1.0 if 1.0 in temperatures else float(temperatures[0]),
                                                   description="tau", continuous_update=True)
        self.image = widgets.Image(format="png")
        for control in (self.head, self.query, self.temperature):
            control.observe(self._on_change, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.head, self.query, self.temperature]), self.image])
        self._on_change()
        for _, tau in self.temperature.options:  # warm: the first moves of tau after Run All only swap images
            if (self.head.value, self.query.value, tau) not in self.cache:
                self.cache[(self.head.value, self.query.value, tau)] = self.render(self.head.value, self.query.value,
                                                                                   tau)
        display.settle()  # the warm-up's garbage is collected now, not on the first move

    def weights(self, head: int, temperature: float) -> torch.Tensor:
        """softmax(logits / tau) of one head, (L, S): tau < 1 sharpens, tau > 1 flattens."""
        return torch.softmax(self.logits[head] / temperature, dim=-1)

    def _on_change(self, change=None):
        key = (self.head.value, self.query.value, self.temperature.value)
        if key not in self.cache:
            self.cache[key] = self.render(*key)
        self.image.value = self.cache[key]

    def _build_figure(self):
        """Draw the static parts (axes, ticks, labels) once; the parts that change are drawn per view."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle

        L, S = self.logits.shape[1:]
        fig = Figure(figsize=(9, 3.2), dpi=self.dpi)
        canvas = FigureCanvasAgg(fig)
        ax_map, ax_bar = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
        image = ax_map.imshow(torch.zeros(L, S).numpy(), cmap="viridis", vmin=0, vmax=1)
        box = ax_map.add_patch(Rectangle((-0.5, -0.5), S, 1, fill=False, ec="red", lw=2))
        ax_map.set_xticks(range(S), self.key_labels, fontsize=7)
        ax_map.set_yticks(range(L), self.query_labels, fontsize=7)
        ax_map.set_xlabel("key")
        ax_map.set_ylabel("query")
        bars = ax_bar.bar(range(S), torch.zeros(S).numpy(), color="tab:blue")
        ax_bar.set_xticks(range(S), self.key_labels, fontsize=7)
        ax_bar.set_ylim(0, 1)
        ax_bar.set_ylabel("weight")
        for ax in (ax_map, ax_bar):
            ax.set_title(" ", fontsize=9)
        fig.tight_layout()
        self._dynamic = [image, box, *bars, ax_map.title, ax_bar.title]
        for artist in self._dynamic:
            artist.set_animated(True)  # left out of canvas.draw(), drawn per view over the background
        canvas.draw()
        self._background = canvas.copy_from_bbox(fig.bbox)
        self._figure, self._canvas, self._image, self._box, self._bars = fig, canvas, image, box, bars
        self._axes = (ax_map, ax_bar)

    def render(self, head: int, query: int, temperature: float) -> bytes:
        """PNG of head ``head``'s weights at temperature ``temperature``, query ``query`` boxed and in bars."""
        from PIL import Image

        if not hasattr(self, "_figure"):
            self._build_figure()
        weights = self.weights(head, temperature)
        row = weights[query]
        self._image.set_data(weights.numpy())
        self._box.set_y(query - 0.5)
        for bar, weight in zip(self._bars, row.tolist()):
            bar.set_height(weight)
        ax_map, ax_bar = self._axes
        ax_map.set_title(f"{self.head_names[head]}, tau = {temperature:g}", fontsize=9)
        ax_bar.set_title(f"query {query} ({self.query_labels[query]}): its weights over the keys, "
                         f"entropy {softmax_entropy(row).item():.2f} nats", fontsize=9)
        self._canvas.restore_region(self._background)
        for artist in self._dynamic:
            self._figure.draw_artist(artist)
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(self._canvas.buffer_rgba())).save(buffer, format="png", compress_level=1)
        self.render_count += 1
        return buffer.getvalue()

    def _ipython_display_(self):
        display.show(self)
