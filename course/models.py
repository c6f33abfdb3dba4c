"""The workbook's shared models, each built from a config, and their loaders from the shipped checkpoints.

diffusers UNets for images, a small MLP for 2D data, and the classifiers that score samples (digits for
notebooks 03-07 and 11, shapes for 08). A topic's own models (the autoencoder, tiny CLIP, ControlNet) sit in
the topic's module with their loaders, as diffusers pairs ``from_pretrained`` with each model class.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from . import checkpoints, datasets

NUM_DIGIT_CLASSES = 10
NULL_LABEL = NUM_DIGIT_CLASSES  # the label that means "no class": classifier-free guidance's unconditional model


def sinusoid_frequencies(dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """w_i = max_period^(-i / (dim/2)) for i = 0, ..., dim/2 - 1: the frequencies of the sinusoidal encoding."""
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    half = dim // 2
    return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer positional encoding (Vaswani et al. 2017), reused as the diffusion timestep embedding.

    Returns (len(t), dim): [cos(t w_i), sin(t w_i)] with w_i = max_period^(-i / (dim/2)).
    """
    args = t.float()[:, None] * sinusoid_frequencies(dim, max_period)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class TimeMLP(nn.Module):
    """eps_theta(x_t, t) for 2D points: an MLP on [x_t, sinusoidal(t)]."""

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, time_dim: int = 32):
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "layers": layers, "time_dim": time_dim}
        self.time_dim = time_dim
        blocks, width = [], dim + time_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(hidden, dim))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).expand(x_t.shape[0]) if t.numel() == 1 else t
        return self.net(torch.cat([x_t, sinusoidal_embedding(t, self.time_dim)], dim=1))


def digits_unet_config() -> dict:
    """The class-conditional digits UNet (16x16, 1 channel) of notebooks 03-07 and 11.

    Self-attention sits at the lowest resolution (4x4), where PAG (notebook 07) perturbs it;
    class label NULL_LABEL = 10 is the unconditional model, learned through label dropout.
    """
    return dict(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                block_out_channels=(32, 64, 64),
                down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                num_class_embeds=NUM_DIGIT_CLASSES + 1, norm_num_groups=8, attention_head_dim=32)


def build_digits_unet(config: dict | None = None):
    from diffusers import UNet2DModel

    return UNet2DModel(**(config or digits_unet_config()))


class DigitClassifier(nn.Module):
    """A small CNN on 16x16 digits: scores class accuracy of samples, and its penultimate features serve FID."""

    def __init__(self, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.config = {"width": width, "feature_dim": feature_dim}
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 16, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, NUM_DIGIT_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class NoisyDigitClassifier(nn.Module):
    """p_phi(y | x_t, t): a small CNN on noisy 16x16 digits x_t, told the timestep t (notebook 06's classifier guidance).

    The sinusoidal embedding of t is mapped to a per-channel scale and shift of each conv block's features
    (FiLM), so the same weights read a clean digit at t = 0 and a faint one under heavy noise at t = 900.
    """

    def __init__(self, width: int = 32, time_dim: int = 64, feature_dim: int = 64):
        super().__init__()
        self.config = {"width": width, "time_dim": time_dim, "feature_dim": feature_dim}
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, 2 * time_dim), nn.SiLU())
        channels = (1, width, 2 * width, 2 * width)
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in zip(channels, channels[1:]))
        self.films = nn.ModuleList(nn.Linear(2 * time_dim, 2 * c) for c in channels[1:])
        self.norms = nn.ModuleList(nn.GroupNorm(8, c) for c in channels[1:])
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, feature_dim), nn.SiLU(),
                                  nn.Linear(feature_dim, NUM_DIGIT_CLASSES))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).reshape(-1)
        t = t.expand(x_t.shape[0]) if t.numel() == 1 else t
        emb = self.time_mlp(sinusoidal_embedding(t, self.time_dim).to(x_t.dtype))
        h = x_t
        for i, (conv, film, norm) in enumerate(zip(self.convs, self.films, self.norms)):
            scale, shift = film(emb).chunk(2, dim=1)
            h = nn.functional.silu(norm(conv(h)) * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
            if i < 2:  # 16x16 -> 8x8 -> 4x4
                h = self.pool(h)
        return self.head(h)


class ShapesClassifier(nn.Module):
    """Shape class and colour of a 32x32 image, two heads on one small CNN: scores text-to-image samples."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.config = {"width": width}
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.shape_head = nn.Linear(2 * width, len(datasets.SHAPE_NAMES))
        self.colour_head = nn.Linear(2 * width, len(datasets.COLOUR_NAMES))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(images)
        return self.shape_head(h), self.colour_head(h)


# --------------------------------------------------------------------------- loaders of the shipped checkpoints

def load_classifier(directory: Path | None = None) -> DigitClassifier:
    """The shipped digit classifier (sha256-verified): class accuracy of samples, and FID's features."""
    return checkpoints.load_model("digit_classifier", lambda config: DigitClassifier(**config), directory)


def load_digits_unet(directory: Path | None = None):
    """The shipped class-conditional digits UNet of notebooks 03-07, 09-11 (sha256-verified)."""
    return checkpoints.load_model("digits_unet", lambda config: build_digits_unet(), directory)


def load_digits_flow(directory: Path | None = None):
    """The shipped digits flow UNet of notebook 12: the same UNet trained with the CFM loss (sha256-verified)."""
    return checkpoints.load_model("digits_flow", lambda config: build_digits_unet(), directory)


def load_noisy_classifier(directory: Path | None = None) -> NoisyDigitClassifier:
    """The shipped time-dependent classifier p_phi(y | x_t, t) of notebook 06 (sha256-verified)."""
    return checkpoints.load_model("noisy_digit_classifier", lambda config: NoisyDigitClassifier(**config), directory)


def load_shapes_classifier(directory: Path | None = None) -> ShapesClassifier:
    """The shipped shapes classifier that reads notebook 08's samples (sha256-verified)."""
    return checkpoints.load_model("shapes_classifier", lambda config: ShapesClassifier(**config), directory)


def load_toy(dataset: str, directory: Path | None = None) -> TimeMLP:
    """The shipped 2D eps-model trained on one of ``datasets.TOY_DATASETS``."""
    return checkpoints.load_model(f"toy_{dataset}", lambda config: TimeMLP(**config), directory)
