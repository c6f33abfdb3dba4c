"""Plotting helpers: image grids, 2D scatter plots, and figures rendered to PNG bytes."""
from __future__ import annotations

import io

import numpy as np
import torch
from matplotlib.figure import Figure

from . import validate


def to_display(images) -> np.ndarray:
    """(N, C, H, W) images in [-1, 1] -> (N, H, W, C) floats in [0, 1] for imshow."""
    images = validate.floating("images", images).detach().cpu()
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    return ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()


def image_grid(images, titles=None, ncols: int = 8, size: float = 1.2, title: str | None = None,
               fig: Figure | None = None) -> Figure:
    """Show (N, C, H, W) images in [-1, 1] as a grid, with an optional title per image."""
    pixels = to_display(images)
    n = len(pixels)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries for {n} images")
    fig = fig or Figure(figsize=(ncols * size, nrows * size + (0.3 if title else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            img = pixels[i]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=8)
    if title:
        fig.suptitle(title)
    if hasattr(fig, "tight_layout"):  # a SubFigure has none; its parent lays it out
        fig.tight_layout()
    return fig


def clamp_to_box(points, lim: float):
    """Pull (N, 2) points into the square [-lim, lim]^2, to draw them on its edge.

    Returns (clamped points, number of points that were outside). A predicted x_0 at large t
    divides by sqrt(alpha_bar_t) ~ 0.006, so almost every point lands far outside a plot of the data.
    """
    points = validate.floating("points", points)
    outside = int((points.abs() > lim).any(dim=-1).sum())
    return points.clamp(-lim, lim), outside


def scatter2d(points, labels=None, ax=None, title: str | None = None, lim: float = 3.5, s: float = 3):
    """Scatter plot of (N, 2) points, coloured by label if given. Returns the axes."""
    points = validate.floating("points", points)
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {tuple(points.shape)}")
    if ax is None:
        ax = Figure(figsize=(3.2, 3.2)).subplots()
    pts = points.detach().cpu().numpy()
    if labels is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=s)
    else:
        ax.scatter(pts[:, 0], pts[:, 1], c=torch.as_tensor(labels).cpu().numpy(), s=s, cmap="tab10", vmin=0, vmax=9)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def show(fig: Figure):
    """Display a figure in a notebook exactly once, as a PNG, whatever the matplotlib backend.

    Works for a matplotlib.figure.Figure and for a pyplot figure; the pyplot one is closed afterwards, so the
    inline backend does not draw it a second time at the end of the cell.
    """
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
    display(Image(buffer.getvalue()))
    if getattr(fig.canvas, "manager", None) is not None:  # made by pyplot
        plt.close(fig)


def figure_to_png(fig: Figure, dpi: int = 80) -> bytes:
    """Render a Figure to PNG bytes (and free it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def grid_png(images: torch.Tensor, ncols: int = 8, scale: int = 5) -> bytes:
    """(N, 1, H, W) or (N, 3, H, W) images in [-1, 1] as a PNG grid, drawn with PIL: milliseconds, where
    matplotlib takes ~100."""
    from PIL import Image

    images = torch.as_tensor(images)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1, H, W) or (N, 3, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrows = -(-n // ncols)
    canvas = torch.ones(c, nrows * (h + 1) + 1, ncols * (w + 1) + 1)
    pixels = (images.clamp(-1, 1) + 1) / 2
    for i in range(n):
        r, col = divmod(i, ncols)
        canvas[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = pixels[i]
    array = (canvas * 255).round().byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if c == 1 else array, mode="L" if c == 1 else "RGB")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rows_figure(rows: dict, title: str | None = None, size: float = 0.75):
    """A grid with one named row per entry of ``rows`` (name -> (N, 1, H, W) images in [-1, 1]), the names on
    the left: conditions above the samples drawn for them."""
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


def before_after_figure(before: torch.Tensor, after: torch.Tensor, labels=None, title: str | None = None):
    """Two rows from the same noise and labels: the base model's samples above, the adapted model's below."""
    if before.shape != after.shape:
        raise ValueError(f"before and after must have the same shape, got {tuple(before.shape)} and "
                         f"{tuple(after.shape)}")
    n = len(before)
    fig = Figure(figsize=(n * 0.9 + 0.3, 2 * 0.9 + 0.8))
    top, bottom = fig.subfigures(2, 1)
    titles = [str(int(y)) for y in labels] if labels is not None else None
    image_grid(before, titles=titles, ncols=n, size=0.9, title="before: the base model", fig=top)
    image_grid(after, ncols=n, size=0.9, title="after: base + LoRA", fig=bottom)
    if title:
        fig.suptitle(title)
    return fig
