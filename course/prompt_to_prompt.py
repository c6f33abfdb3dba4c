"""Prompt-to-prompt in miniature (Hertz et al. 2022; notebook 08): read and edit the cross-attention of the
text-conditioned latent UNet while it samples: per-token maps, re-weighting a word, and injecting one prompt's
maps into another's sampling (the word swap that keeps the layout).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import datasets, metrics
from .ddim import ddim_sample
from .ldm import MAX_TOKENS, UNK, decode, encode_prompts, latent_eps_model, tokenize_batch, tokens_of
from .schedules import get_schedule


class CrossAttentionControl:
    """Reads and edits the cross-attention probabilities of a UNet2DConditionModel (prompt-to-prompt style).

    Installed on every cross-attention layer (``attn2``) by ``controlled(unet, control)``. During sampling it
    records, for the conditional half of the batch, the probabilities averaged over heads: ``maps[layer]`` is a list
    over steps of (B, H*W, tokens). Two edits (Hertz et al. 2022):
    - ``token_weights`` {batch index: (tokens,) weights}: multiply each token's column after the softmax (re-weighting);
    - ``inject`` {target index: source index}: during the first ``inject_fraction`` of the steps, the target sample
      uses the source's maps (word swap: the layout of the source, the words of the target).
    """

    def __init__(self, conditional_batch: int, token_weights: dict | None = None, inject: dict | None = None,
                 inject_fraction: float = 0.6, record: bool = True):
        self.conditional_batch = conditional_batch
        self.token_weights, self.inject = token_weights or {}, inject or {}
        self.inject_fraction, self.record = inject_fraction, record
        self.maps, self.step, self.total_steps = {}, 0, 1

    def edit(self, name: str, probs: torch.Tensor, heads: int) -> torch.Tensor:
        batch = probs.shape[0] // heads
        probs = probs.reshape(batch, heads, *probs.shape[1:])
        if self.inject and self.step < self.inject_fraction * self.total_steps:
            probs = probs.clone()
            for target, source in self.inject.items():
                probs[target] = probs[source]
        if self.token_weights:
            probs = probs.clone()
            for index, weights in self.token_weights.items():
                probs[index] = probs[index] * torch.as_tensor(weights, dtype=probs.dtype)
        if self.record:
            self.maps.setdefault(name, []).append(probs[:self.conditional_batch].mean(1).detach())
        return probs.reshape(batch * heads, *probs.shape[2:])


class _ControlledCrossAttnProcessor:
    """diffusers' AttnProcessor (explicit probabilities) with the probabilities passed through a control."""

    def __init__(self, name: str, control: CrossAttentionControl):
        self.name, self.control = name, control

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = self.control.edit(self.name, attn.get_attention_scores(query, key, None), attn.heads)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def cross_attention_layers(unet) -> dict:
    """{module path: Attention} for every cross-attention layer (the attn2 of each transformer block)."""
    return {name: module for name, module in unet.named_modules() if name.endswith("attn2")}


class controlled:
    """Context manager: route the UNet's cross-attention through ``control``, and restore the processors after."""

    def __init__(self, unet, control: CrossAttentionControl):
        self.unet, self.control = unet, control

    def __enter__(self):
        self.saved = {}
        for name, module in cross_attention_layers(self.unet).items():
            self.saved[name] = module.processor
            module.set_processor(_ControlledCrossAttnProcessor(name, self.control))
        return self.control

    def __exit__(self, *exc):
        layers = cross_attention_layers(self.unet)
        for name, processor in self.saved.items():
            layers[name].set_processor(processor)
        return False


@torch.no_grad()
def sample_with_attention(unet, vae, text_encoder, prompts, scaling_factor: float, w: float = 2.0, steps: int = 20,
                          seed: int = 0, z_T=None, token_weights=None, inject=None, inject_fraction: float = 0.6,
                          context=None):
    """Text-to-image with the cross-attention recorded (and edited if asked); returns (images, control).

    With several prompts and ``z_T=None`` every prompt starts from the same noise (seeded), as prompt-to-prompt needs.
    ``context`` (B, MAX_TOKENS, width), if given, replaces the prompts' token states (e.g. ``reweight_word_states``).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    n = len(prompts)
    if z_T is None:
        z_T = torch.randn((1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size),
                          generator=torch.Generator().manual_seed(seed)).expand(n, -1, -1, -1).clone()
    if len(z_T) != n:
        raise ValueError(f"z_T has {len(z_T)} samples for {n} prompts")
    control = CrossAttentionControl(n, token_weights, inject, inject_fraction)
    control.total_steps = steps
    if context is None:
        context = encode_prompts(text_encoder, prompts)
    elif tuple(context.shape[:2]) != (n, MAX_TOKENS):
        raise ValueError(f"context must be ({n}, {MAX_TOKENS}, width) for {n} prompts, got {tuple(context.shape)}")
    null_context = encode_prompts(text_encoder, [""] * n)
    guided = latent_eps_model(unet, context, null_context, w)

    def eps_model(z_t, t):
        out = guided(z_t, t)
        control.step += 1
        return out

    with controlled(unet, control):
        z_0, _ = ddim_sample(eps_model, get_schedule("linear"), tuple(z_T.shape), steps=steps, x_T=z_T,
                                      progress=False)
    return decode(vae, z_0 / scaling_factor).clamp(-1, 1), control


def token_maps(control: CrossAttentionControl, size: int = 32) -> torch.Tensor:
    """(B, tokens, size, size): each token's cross-attention, averaged over heads, layers and steps, upsampled."""
    per_layer = []
    for steps in control.maps.values():
        probs = torch.stack(steps).mean(0)  # (B, H*W, tokens)
        side = int(round(probs.shape[1] ** 0.5))
        grid = probs.transpose(1, 2).reshape(probs.shape[0], probs.shape[2], side, side)
        per_layer.append(F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False))
    return torch.stack(per_layer).mean(0)


def token_shares(control: CrossAttentionControl) -> torch.Tensor:
    """(B, tokens): the share of all cross-attention each token receives, averaged over locations, heads, layers
    and steps (each row sums to 1; a uniform softmax gives 1 / MAX_TOKENS to each)."""
    return torch.stack([torch.stack(steps).mean((0, 2)) for steps in control.maps.values()]).mean(0)


# --------------------------------------------------------------------------- re-weighting a word


def word_position(prompt: str, word: str) -> int:
    """The token index of ``word`` in ``prompt`` (0 is <bos>); a clear error if the prompt lacks it."""
    tokens = tokens_of(prompt)
    if word not in tokens:
        raise ValueError(f"{word!r} is not a token of {prompt!r} (its tokens: {' '.join(tokens)})")
    return tokens.index(word)


@torch.no_grad()
def word_contribution(text_encoder, prompt: str, word: str) -> torch.Tensor:
    """(MAX_TOKENS,): how far each token's state moves when ``word`` is replaced by <unk>, ||tau(y) - tau(y')||.

    The text encoder is causal, so the tokens before the word do not move, and every token after it (the next words,
    <eos>, the padding) carries part of the word: the word does not live in its own column alone."""
    return (text_encoder(tokenize_batch([prompt], warn=False)) - neutral_states(text_encoder, prompt, word)).norm(dim=-1)[0]


@torch.no_grad()
def neutral_states(text_encoder, prompt: str, word: str) -> torch.Tensor:
    """(1, MAX_TOKENS, width): the token states of ``prompt`` with ``word`` replaced by <unk> (which the model
    learnt as "unspecified", from the single words dropped in training)."""
    ids = tokenize_batch([prompt], warn=False)
    ids[0, word_position(prompt, word)] = UNK
    return text_encoder(ids)


@torch.no_grad()
def reweight_word_states(text_encoder, prompt: str, word: str, c: float) -> torch.Tensor:
    """(1, MAX_TOKENS, width): the token states with the word's contribution to *every* token scaled by c,

        tau_c = tau(y') + c (tau(y) - tau(y')),    y' = the prompt with the word replaced by <unk>.

    c = 1 is the prompt, c = 0 is "<unk>" in the word's place, c > 1 extrapolates. Re-weighting in this form follows
    the word into the later tokens that the causal encoder copied it into; no training needed."""
    neutral = neutral_states(text_encoder, prompt, word)
    return neutral + c * (text_encoder(tokenize_batch([prompt], warn=False)) - neutral)


REWEIGHT_METHODS = ("word column", "word column and later tokens", "word's contribution to every state")


def word_probability(classifier, images: torch.Tensor, word: str) -> torch.Tensor:
    """(B,): the shapes classifier's probability that each image shows ``word`` (a colour or a shape name)."""
    shape_logits, colour_logits = classifier(images)
    if word in datasets.COLOUR_NAMES:
        return colour_logits.softmax(1)[:, datasets.COLOUR_NAMES.index(word)]
    if word in datasets.SHAPE_NAMES:
        return shape_logits.softmax(1)[:, datasets.SHAPE_NAMES.index(word)]
    raise ValueError(f"{word!r} is neither a colour {datasets.COLOUR_NAMES} nor a shape {datasets.SHAPE_NAMES}")


def seeded_noise(unet, seeds) -> torch.Tensor:
    """(len(seeds), C, H, W): one latent noise per seed, each drawn from its own generator (batch-size independent)."""
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def reweight(unet, vae, text_encoder, prompt: str, word: str, c: float, method: str, scaling_factor: float,
             seeds=(0,), w: float = 2.0, steps: int = 20) -> torch.Tensor:
    """Samples of ``prompt`` (one per seed) with ``word`` re-weighted by c, by one of ``REWEIGHT_METHODS``:

    - "word column": prompt-to-prompt's edit, the word's column of the attention probabilities times c;
    - "word column and later tokens": the same factor on every token from the word on (padding included);
    - "word's contribution to every state": ``reweight_word_states`` (keys and values of the edited states)."""
    if method not in REWEIGHT_METHODS:
        raise ValueError(f"method must be one of {REWEIGHT_METHODS}, got {method!r}")
    position, n = word_position(prompt, word), len(seeds)
    z_T = seeded_noise(unet, seeds)
    if method == REWEIGHT_METHODS[2]:
        context = reweight_word_states(text_encoder, prompt, word, c).expand(n, -1, -1)
        images, _ = sample_with_attention(unet, vae, text_encoder, [prompt] * n, scaling_factor, w, steps, z_T=z_T,
                                          context=context)
        return images
    weights = torch.ones(MAX_TOKENS)
    weights[position:position + 1 if method == REWEIGHT_METHODS[0] else MAX_TOKENS] = c
    images, _ = sample_with_attention(unet, vae, text_encoder, [prompt] * n, scaling_factor, w, steps, z_T=z_T,
                                      token_weights={i: weights for i in range(n)})
    return images


# --------------------------------------------------------------------------- word swap: does the layout stay?


def shape_centroids(images: torch.Tensor) -> torch.Tensor:
    """(B, 2): the (row, column) centre in pixels of each image's shape mask (``metrics.shape_masks``); the image
    centre for an empty mask."""
    masks = metrics.shape_masks(images)[:, 0]
    h, w = masks.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(h, dtype=masks.dtype), torch.arange(w, dtype=masks.dtype), indexing="ij")
    mass = masks.sum((1, 2))
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2])
    found = torch.stack([(masks * rows).sum((1, 2)), (masks * cols).sum((1, 2))], 1) / mass.clamp(min=1)[:, None]
    return torch.where(mass[:, None] > 0, found, centre)


SWAP_SETTINGS = ("different noise", "shared noise", "shared noise + maps 60% of steps",
                 "shared noise + maps 100% of steps")


@torch.no_grad()
def word_swap_layout(unet, vae, text_encoder, source: str, targets, scaling_factor: float, seed: int,
                     w: float = 2.0, steps: int = 20) -> dict:
    """For each of ``SWAP_SETTINGS``: the target images and, against the source image (seed ``seed``), the shift of
    the shape's centre in pixels and the IoU of the shape masks. "different noise" draws the targets from seed
    ``seed + 1000``: the baseline any layout-keeping edit must beat."""
    targets = list(targets)
    prompts, n = [source] + targets, len(targets)
    shared = seeded_noise(unet, [seed]).expand(n + 1, -1, -1, -1).clone()
    reference, _ = sample_with_attention(unet, vae, text_encoder, prompts[:1], scaling_factor, w, steps,
                                         z_T=shared[:1])
    out = {}
    for setting in SWAP_SETTINGS:
        if setting == "different noise":
            images, _ = sample_with_attention(unet, vae, text_encoder, targets, scaling_factor, w, steps,
                                              z_T=seeded_noise(unet, [seed + 1000]).expand(n, -1, -1, -1).clone())
        else:
            fraction = {"shared noise": 0.0, SWAP_SETTINGS[2]: 0.6, SWAP_SETTINGS[3]: 1.0}[setting]
            inject = {i: 0 for i in range(1, n + 1)} if fraction > 0 else None
            images, _ = sample_with_attention(unet, vae, text_encoder, prompts, scaling_factor, w, steps, z_T=shared,
                                              inject=inject, inject_fraction=fraction)
            images = images[1:]
        shift = (shape_centroids(images) - shape_centroids(reference)).norm(dim=1)
        iou = metrics.mask_iou(metrics.shape_masks(images), metrics.shape_masks(reference).expand(n, -1, -1, -1))
        out[setting] = {"images": images, "centroid_shift_px": shift, "iou": iou}
    out["reference"] = reference
    return out
