"""Latent diffusion in miniature (notebook 08): an autoencoder, a tiny CLIP, and a text-conditioned latent UNet.

Reading and editing its cross-attention (prompt-to-prompt) is in :mod:`course.prompt_to_prompt`.

The data is `datasets.shapes`: 32x32 coloured shapes with captions such as "a red circle".
Training order, as in Stable Diffusion: autoencoder -> text encoder (contrastive, CLIP-style) -> latent UNet.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoints, datasets, ddim, models
from .attention import cross_attention
from .guidance import cfg_combine
from .schedules import get_schedule


# --------------------------------------------------------------------------- autoencoder


def vae_config() -> dict:
    """AutoencoderKL for 32x32x3 shapes: two downsamplings give 8x8x4 latents (3072 -> 256 numbers, 12x)."""
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=32, layers_per_block=1,
                block_out_channels=(16, 32, 32), norm_num_groups=8,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)


def build_vae(config: dict | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**(config or vae_config()))


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mean + sigma * eps with sigma = exp(logvar / 2): the sample stays differentiable in mean and logvar."""
    return mean + torch.exp(0.5 * logvar) * eps


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, sigma^2) || N(0, 1)) = 0.5 (mean^2 + sigma^2 - 1 - log sigma^2), summed over latent
    elements and averaged over the batch (Kingma & Welling, Appendix B)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()


def vae_loss(vae, images: torch.Tensor, kl_weight: float, generator=None) -> tuple[torch.Tensor, dict]:
    """Reconstruction (mean squared error per pixel) + kl_weight * KL per image: the weak-KL autoencoder objective."""
    posterior = vae.encode(images).latent_dist
    eps = torch.randn(posterior.mean.shape, generator=generator)
    z = reparameterize(posterior.mean, posterior.logvar, eps)
    reconstruction = vae.decode(z).sample
    mse = F.mse_loss(reconstruction, images)
    kl = kl_to_standard_normal(posterior.mean, posterior.logvar)
    return mse + kl_weight * kl, {"mse": mse.item(), "kl": kl.item()}


@torch.no_grad()
def encode_mean(vae, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The posterior means of a set of images (the latents the diffusion model is trained on, before scaling)."""
    return torch.cat([vae.encode(images[i:i + batch_size]).latent_dist.mean
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def decode(vae, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([vae.decode(latents[i:i + batch_size]).sample for i in range(0, len(latents), batch_size)])


def latent_scaling_factor(latents: torch.Tensor) -> float:
    """1 / std of the training latents, so that scaled latents have unit variance like the noise (SD's 0.18215
    is this number for SD's autoencoder; ours is computed, not borrowed)."""
    return 1.0 / latents.float().std().item()


# --------------------------------------------------------------------------- cross-attention conditioning


def cross_attention_layer(feature_map: torch.Tensor, tokens: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor,
                          W_v: torch.Tensor, W_o: torch.Tensor) -> torch.Tensor:
    """One single-head cross-attention conditioning layer with its residual (Rombach et al. 2022, eq. 3):

    Q = phi(z) W_q from the H*W pixel features phi(z) of (B, C, H, W); K = tau W_k, V = tau W_v from the text's
    token states tau (B, N, D). out = z + softmax(Q K^T / sqrt(d)) V W_o, reshaped back to (B, C, H, W).
    """
    return feature_map + cross_attention(feature_map, tokens, W_q, W_k, W_v, W_o)[0]


# --------------------------------------------------------------------------- tokenizer and tiny CLIP

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(4)
CAPTION_WORDS = ("a",) + datasets.COLOUR_NAMES + datasets.SHAPE_NAMES
VOCABULARY = SPECIAL_TOKENS + CAPTION_WORDS
MAX_TOKENS = 8  # <bos> + up to 6 words + <eos>


def tokenize(prompt: str, warn: bool = True) -> list[int]:
    """Token ids for one prompt: <bos>, one id per lower-cased word (unknown words -> <unk>), <eos>, padding.

    An empty prompt is <bos> <eos>: the unconditional prompt the model was trained with (caption dropout).
    Prompts longer than MAX_TOKENS - 2 words are cut, with a warning.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a string, got {type(prompt).__name__}")
    words = prompt.lower().replace(",", " ").replace(".", " ").split()
    unknown = [w for w in words if w not in CAPTION_WORDS]
    if unknown and warn:
        warnings.warn(f"unknown words {unknown} become <unk>; the model knows only: {', '.join(CAPTION_WORDS)}",
                      stacklevel=2)
    if len(words) > MAX_TOKENS - 2:
        if warn:
            warnings.warn(f"prompt cut to its first {MAX_TOKENS - 2} words", stacklevel=2)
        words = words[:MAX_TOKENS - 2]
    ids = [BOS] + [VOCABULARY.index(w) if w in CAPTION_WORDS else UNK for w in words] + [EOS]
    return ids + [PAD] * (MAX_TOKENS - len(ids))


def tokens_of(prompt: str) -> list[str]:
    """The token strings of a prompt, up to and including <eos> (labels for per-token attention maps)."""
    ids = tokenize(prompt, warn=False)
    return [VOCABULARY[i] for i in ids[:ids.index(EOS) + 1]]


def tokenize_batch(prompts, warn: bool = True) -> torch.Tensor:
    if isinstance(prompts, str):
        prompts = [prompts]
    return torch.tensor([tokenize(p, warn) for p in prompts], dtype=torch.long)


class TextEncoder(nn.Module):
    """A two-layer causal transformer over caption tokens, like CLIP's text tower in miniature.

    forward returns per-token states (B, MAX_TOKENS, width): the keys and values of the UNet's cross-attention.
    `pooled` reads the state at <eos>, the caption's summary used by the contrastive objective.
    """

    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.config = {"width": width, "layers": layers, "heads": heads}
        self.token_embedding = nn.Embedding(len(VOCABULARY), width)
        self.position_embedding = nn.Parameter(torch.randn(MAX_TOKENS, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(width)
        self.register_buffer("causal_mask", torch.triu(torch.full((MAX_TOKENS, MAX_TOKENS), float("-inf")), 1),
                             persistent=False)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        h = self.token_embedding(token_ids) + self.position_embedding
        return self.final_norm(self.transformer(h, mask=self.causal_mask, is_causal=True))

    def pooled(self, token_ids: torch.Tensor) -> torch.Tensor:
        states = self(token_ids)
        eos_position = (token_ids == EOS).float().argmax(1)
        return states[torch.arange(len(token_ids)), eos_position]


class ImageEncoder(nn.Module):
    """A small CNN from a 32x32 image to one vector: CLIP's image tower in miniature."""

    def __init__(self, width: int = 32, out_dim: int = 64):
        super().__init__()
        self.config = {"width": width, "out_dim": out_dim}
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(2 * width, out_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class TinyCLIP(nn.Module):
    """Text and image towers projected into one space, trained so matching pairs have the highest cosine similarity."""

    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4, embed_dim: int = 64):
        super().__init__()
        self.config = {"width": width, "layers": layers, "heads": heads, "embed_dim": embed_dim}
        self.text = TextEncoder(width, layers, heads)
        self.image = ImageEncoder(out_dim=embed_dim)
        self.text_projection = nn.Linear(width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def embed_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(self.text.pooled(token_ids)), dim=-1)

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(images), dim=-1)

    def similarity(self, images: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Cosine similarities, images along rows and captions along columns."""
        return self.embed_image(images) @ self.embed_text(token_ids).T


def clip_loss(similarity: torch.Tensor, logit_scale: torch.Tensor, same_caption: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over the similarity matrix: each image should pick its caption in its row,
    each caption its image in its column. Pairs that share a caption (same_caption[i, j]) are all positives,
    so the target of a row is spread evenly over them."""
    logits = similarity * logit_scale.exp()
    target = same_caption.float() / same_caption.float().sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T))


# --------------------------------------------------------------------------- latent UNet


def latent_unet_config(in_channels: int = 4, sample_size: int = 8, cross_attention_dim: int = 64) -> dict:
    """UNet2DConditionModel over 8x8x4 latents: cross-attention to the caption's token states at 8x8 and 4x4."""
    return dict(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
                attention_head_dim=16, norm_num_groups=8)


def pixel_unet_config(cross_attention_dim: int = 64) -> dict:
    """The pixel-space twin for the compute comparison: 32x32x3 in, a similar parameter count, cross-attention at
    16x16 and 8x8 (one more level than the latent model, so its lowest resolution is the same 8x8)."""
    return dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 32, 64),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=cross_attention_dim, attention_head_dim=16, norm_num_groups=8)


def build_latent_unet(config: dict | None = None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**(config or latent_unet_config()))


# --------------------------------------------------------------------------- text-to-image


def all_captions() -> list[str]:
    """The twelve captions of the training data, shape-major: "a red circle", "a green circle", ..."""
    return [f"a {c} {s}" for s in datasets.SHAPE_NAMES for c in datasets.COLOUR_NAMES]


@torch.no_grad()
def encode_prompts(text_encoder: TextEncoder, prompts, warn: bool = True) -> torch.Tensor:
    """Per-token states (B, MAX_TOKENS, width) of the frozen text encoder: what cross-attention attends to."""
    return text_encoder(tokenize_batch(prompts, warn))


def latent_eps_model(unet, context: torch.Tensor, null_context: torch.Tensor, w: float = 0.0):
    """eps_model(z_t, t) with classifier-free guidance at scale w: (1 + w) eps(z_t, c) - w eps(z_t, "")."""
    def eps_model(z_t, t):
        if w == 0:
            return unet(z_t, t, encoder_hidden_states=context).sample
        t = torch.as_tensor(t)
        t = torch.cat([t, t]) if t.dim() > 0 and t.numel() > 1 else t
        both = unet(torch.cat([z_t, z_t]), t, encoder_hidden_states=torch.cat([context, null_context])).sample
        eps_cond, eps_uncond = both.chunk(2)
        return cfg_combine(eps_cond, eps_uncond, w)
    return eps_model


@torch.no_grad()
def text_to_latents(unet, text_encoder, prompts, w: float = 2.0, steps: int = 20, seed: int = 0, z_T=None,
                    keep=()):
    """DDIM (eta = 0) in latent space, one sample per prompt; returns (z_0, frames) in scaled latent units."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("give at least one prompt (an empty string is allowed: it means 'any shape')")
    context = encode_prompts(text_encoder, prompts)
    null_context = encode_prompts(text_encoder, [""] * len(prompts))
    shape = (len(prompts), unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    return ddim.ddim_sample(latent_eps_model(unet, context, null_context, w), get_schedule("linear"), shape,
                                steps=steps, seed=seed, x_T=z_T, keep=keep, progress=False)


def text_to_image(unet, vae, text_encoder, prompts, scaling_factor: float, w: float = 2.0, steps: int = 20,
                  seed: int = 0, z_T=None) -> torch.Tensor:
    """Prompts -> latents (DDIM with CFG) -> the decoder: images (B, 3, 32, 32) in [-1, 1].

    ``vae=None`` is a pixel-space model: its samples are the images (and scaling_factor is ignored).
    """
    z_0, _ = text_to_latents(unet, text_encoder, prompts, w, steps, seed, z_T)
    return (z_0 if vae is None else decode(vae, z_0 / scaling_factor)).clamp(-1, 1)


# --------------------------------------------------------------------------- scoring captions

@torch.no_grad()
def text_to_image_accuracy(unet, vae, text_encoder, scaling_factor: float, w: float, per_caption: int,
                           seed: int = 0, steps: int = 20) -> dict:
    """Samples for each of the twelve captions, read back by the shipped shapes classifier."""
    captions = [c for c in all_captions() for _ in range(per_caption)]
    images = text_to_image(unet, vae, text_encoder, captions, scaling_factor, w, steps, seed)
    scores = caption_accuracy(models.load_shapes_classifier(), images, captions)
    return {**{key: round(value, 4) for key, value in scores.items()}, "samples_scored": len(captions),
            "ddim_steps": steps}


@torch.no_grad()
def caption_accuracy(classifier, images: torch.Tensor, captions) -> dict:
    """How often the shapes classifier reads each image as its caption's shape, colour, and both."""
    shape_logits, colour_logits = classifier(images)
    want_shape = torch.tensor([datasets.SHAPE_NAMES.index(c.split()[2]) for c in captions])
    want_colour = torch.tensor([datasets.COLOUR_NAMES.index(c.split()[1]) for c in captions])
    shape_ok, colour_ok = shape_logits.argmax(1) == want_shape, colour_logits.argmax(1) == want_colour
    return {"shape_accuracy": shape_ok.float().mean().item(), "colour_accuracy": colour_ok.float().mean().item(),
            "both_accuracy": (shape_ok & colour_ok).float().mean().item()}


# --------------------------------------------------------------------------- loaders of the shipped checkpoints

def load_shapes_vae(name: str = "shapes_vae", directory: Path | None = None):
    """The shipped autoencoder ("shapes_vae", weak KL) or its KL = 0 twin ("shapes_vae_kl0")."""
    return checkpoints.load_model(name, lambda config: build_vae(), directory, frozen=True)


def load_latent_scaling_factor(name: str = "shapes_vae", directory: Path | None = None) -> float:
    """The scaling factor computed when the autoencoder was trained: 1 / std of its training latents."""
    return checkpoints.manifest_entry(name, directory)["quality"]["latent_scaling_factor"]


def load_shapes_clip(directory: Path | None = None):
    """The shipped tiny CLIP; its ``.text`` is the text encoder the latent UNet cross-attends to."""
    return checkpoints.load_model("shapes_clip", lambda config: TinyCLIP(**config), directory, frozen=True)


def load_shapes_ldm(name: str = "shapes_ldm", directory: Path | None = None):
    """The text-conditioned latent UNet of notebook 08, or by name a pixel-space twin (shapes_pixel, _long)."""
    return checkpoints.load_model(name, build_latent_unet, directory, frozen=True)
