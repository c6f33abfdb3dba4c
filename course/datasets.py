"""Offline, deterministic datasets: 2D toys, handwritten digits, and captioned shapes.

Nothing here downloads. The same ``seed`` always gives the same data.
Images are float tensors of shape (N, C, H, W) scaled to [-1, 1] (DDPM sec. 3.3).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import validate


# --------------------------------------------------------------------------- 2D toys

def swiss_roll(n: int = 2000, noise: float = 0.05, seed: int = 0):
    """A 2D swiss roll scaled to roughly unit variance. Returns (x of shape (n, 2), label in {0, 1, 2} by arm turn)."""
    validate.positive_int("n", n)
    rng = np.random.default_rng(seed)
    angle = 1.5 * np.pi * (1 + 2 * rng.random(n))
    x = np.stack([angle * np.cos(angle), angle * np.sin(angle)], axis=1) / 7.0
    x += noise * rng.standard_normal(x.shape)
    labels = np.minimum(((angle - 1.5 * np.pi) / (3 * np.pi) * 3).astype(int), 2)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(labels)


def two_moons(n: int = 2000, noise: float = 0.05, seed: int = 0):
    """Two interleaved half circles, centred and scaled. Returns (x of shape (n, 2), label in {0, 1})."""
    validate.positive_int("n", n)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    angle = np.pi * rng.random(n)
    upper = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    lower = np.stack([1 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
    x = np.where(labels[:, None] == 0, upper, lower) + noise * rng.standard_normal((n, 2))
    x = (x - np.array([0.5, 0.25])) / 0.7
    return torch.tensor(x, dtype=torch.float32), torch.tensor(labels)


@dataclass(frozen=True)
class GaussianMixture2D:
    """A mixture of isotropic 2D Gaussians whose score is known exactly at every noise level.

    Under the forward process, component k of N(mu_k, s^2 I) becomes
    N(sqrt(alpha_bar) mu_k, (alpha_bar s^2 + 1 - alpha_bar) I), so the noised density,
    and its score grad_x log p_t(x), stay in closed form.
    """

    means: tuple = ((-1.5, -1.5), (1.5, -1.5), (0.0, 1.6), (1.5, 1.5))
    std: float = 0.25
    weights: tuple = (0.25, 0.25, 0.25, 0.25)

    def _params(self, alpha_bar, added_var: float = 0.0):
        means = torch.tensor(self.means, dtype=torch.float64)
        alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
        var = alpha_bar * self.std ** 2 + (1 - alpha_bar) + added_var
        return torch.sqrt(alpha_bar) * means, var

    def sample(self, n: int = 2000, seed: int = 0):
        """Draw n points. Returns (x of shape (n, 2), component label)."""
        validate.positive_int("n", n)
        gen = torch.Generator().manual_seed(seed)
        labels = torch.multinomial(torch.tensor(self.weights), n, replacement=True, generator=gen)
        x = torch.tensor(self.means, dtype=torch.float32)[labels]
        return x + self.std * torch.randn(n, 2, generator=gen), labels

    def responsibilities(self, x, alpha_bar, added_var: float = 0.0):
        """log(w_k N(x; mean_k, var)) per component (N, K), and x - mean_k, var, at noise level alpha_bar."""
        means, var = self._params(alpha_bar, added_var)
        diff = x.double()[:, None, :] - means[None]
        log_w = torch.log(torch.tensor(self.weights, dtype=torch.float64))
        log_comp = log_w - 0.5 * (diff ** 2).sum(-1) / var - math.log(2 * math.pi) - torch.log(var)
        return log_comp, diff, var

    def log_prob(self, x, alpha_bar: float = 1.0) -> torch.Tensor:
        """log p_t(x) of the mixture noised to level alpha_bar (1.0 is the data itself)."""
        x = self._check_points(x)
        log_comp, _, _ = self.responsibilities(x, alpha_bar)
        return torch.logsumexp(log_comp, dim=1).to(x.dtype)

    def score(self, x, alpha_bar: float = 1.0, added_var: float = 0.0) -> torch.Tensor:
        """The exact score grad_x log p_t(x) at noise level alpha_bar (VP), or with ``added_var`` of noise added to the
        unscaled data (VE: alpha_bar = 1, added_var = sigma(s)^2)."""
        x = self._check_points(x)
        log_comp, diff, var = self.responsibilities(x, alpha_bar, added_var)
        resp = torch.softmax(log_comp, dim=1)
        return (-(resp[..., None] * diff).sum(1) / var).to(x.dtype)

    @staticmethod
    def _check_points(x):
        x = validate.floating("x", x)
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"x must have shape (N, 2), got {tuple(x.shape)}")
        return x


def gaussian_mixture(n: int = 2000, seed: int = 0):
    """Samples of the default GaussianMixture2D. Returns (x, labels); use GaussianMixture2D() for its score."""
    return GaussianMixture2D().sample(n, seed)


TOY_DATASETS = {"swiss_roll": swiss_roll, "two_moons": two_moons, "gaussian_mixture": gaussian_mixture}


def toy_2d(name: str, n: int = 2000, seed: int = 0):
    """One of the 2D toys by name: 'swiss_roll', 'two_moons' or 'gaussian_mixture'."""
    if name not in TOY_DATASETS:
        raise ValueError(f"name must be one of {sorted(TOY_DATASETS)}, got {name!r}")
    return TOY_DATASETS[name](n=n, seed=seed)


# --------------------------------------------------------------------------- digits

DIGITS_TEST_SIZE = 297  # the last 297 of scikit-learn's 1,797 digits are held out


@functools.lru_cache(maxsize=4)
def _digits(size: int):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    images = (images.clamp(0, 1) * 2 - 1).contiguous()
    return images, torch.tensor(bunch.target)


def digits(split: str = "train", size: int = 16):
    """scikit-learn's 8x8 handwritten digits, upsampled to size x size, in [-1, 1].

    Returns (images of shape (N, 1, size, size), labels 0-9). ``split`` is
    'train' (1,500 images), 'test' (297, never trained on) or 'all'.
    """
    validate.positive_int("size", size)
    images, labels = _digits(size)
    cut = len(images) - DIGITS_TEST_SIZE
    parts = {"train": slice(0, cut), "test": slice(cut, None), "all": slice(None)}
    if split not in parts:
        raise ValueError(f"split must be one of {sorted(parts)}, got {split!r}")
    return images[parts[split]].clone(), labels[parts[split]].clone()


# --------------------------------------------------------------------------- captioned shapes

SHAPE_NAMES = ("circle", "square", "triangle")
COLOUR_NAMES = ("red", "green", "blue", "yellow")
COLOUR_RGB = {"red": (0.9, 0.15, 0.1), "green": (0.15, 0.75, 0.2), "blue": (0.15, 0.35, 0.95),
              "yellow": (0.95, 0.85, 0.1)}
BACKGROUND_RGB = (0.12, 0.12, 0.14)


@dataclass
class Shapes:
    """Coloured shapes, each image with a class, a caption and a spatial condition.

    images: (N, 3, S, S) in [-1, 1]; masks: (N, 1, S, S) in {0, 1};
    labels: shape class (index into SHAPE_NAMES); colours: index into COLOUR_NAMES;
    captions: e.g. "a red circle".
    """

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    colours: torch.Tensor
    captions: list

    def __len__(self):
        return len(self.labels)

    def edges(self) -> torch.Tensor:
        """The outline of each mask (mask minus its 3x3 erosion), a second kind of spatial condition."""
        eroded = -F.max_pool2d(-self.masks, kernel_size=3, stride=1, padding=1)
        return (self.masks - eroded).clamp(0, 1)


def _shape_mask(kind: str, cx: float, cy: float, r: float, size: int, supersample: int = 4) -> np.ndarray:
    n = size * supersample
    coords = (np.arange(n) + 0.5) / supersample
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    if kind == "circle":
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2
    elif kind == "square":
        inside = (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    else:  # an upward triangle inscribed in the circle of radius r
        top, base = cy - r, cy + 0.6 * r
        half_width = (yy - top) / (base - top) * r * 0.95
        inside = (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half_width)
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


@functools.lru_cache(maxsize=4)
def _shapes(n: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPE_NAMES), n)
    colours = rng.integers(0, len(COLOUR_NAMES), n)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    masks = np.empty((n, 1, size, size), dtype=np.float32)
    background = np.array(BACKGROUND_RGB, dtype=np.float32)[:, None, None]
    for i in range(n):
        r = size * rng.uniform(0.18, 0.3)
        cx, cy = rng.uniform(r, size - r, 2)
        coverage = _shape_mask(SHAPE_NAMES[labels[i]], cx, cy, r, size)
        colour = np.array(COLOUR_RGB[COLOUR_NAMES[colours[i]]], dtype=np.float32)[:, None, None]
        images[i] = background * (1 - coverage) + colour * coverage
        masks[i, 0] = coverage >= 0.5
    captions = [f"a {COLOUR_NAMES[c]} {SHAPE_NAMES[s]}" for s, c in zip(labels, colours)]
    return torch.tensor(images * 2 - 1), torch.tensor(masks), torch.tensor(labels), torch.tensor(colours), captions


def shapes(n: int = 2000, size: int = 32, seed: int = 0) -> Shapes:
    """n procedurally drawn shapes of size x size pixels; the same seed gives the same set.

    Use seed 0 for training data and another seed (for example 1) for held-out data.
    """
    validate.positive_int("n", n)
    validate.positive_int("size", size)
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    images, masks, labels, colours, captions = _shapes(n, size, seed)
    return Shapes(images.clone(), masks.clone(), labels.clone(), colours.clone(), list(captions))
