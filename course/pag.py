"""Perturbed-attention guidance (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention
Guidance"): notebook 07.

PAG guides a sample away from what the model predicts when its self-attention cannot see the image's structure
(eq. 10 of the paper):

    eps_tilde(x_t) = eps(x_t) + s (eps(x_t) - eps_hat(x_t)),

where eps_hat is the same network with the self-attention map softmax(Q K^T / sqrt(d)) of chosen layers replaced by
the identity, so that each token's output is its own value V (perturbed self-attention, PSA, eq. 12). CFG is the
special case where the perturbation drops the class label instead.

Like diffusers' ``PAGIdentitySelfAttnProcessor2_0``, the processor here works on a batch that holds the plain and
the perturbed inputs side by side: the last of ``chunks`` equal chunks is perturbed, the others take the ordinary
path, so eps and eps_hat come out of one forward pass (two chunks for PAG, three for PAG + CFG). It serves
UNet2DModel's attention blocks (feature maps (B, C, H, W)) and the self-attention ``attn1`` of diffusers'
transformer blocks (tokens (B, N, C)) alike. Layers are chosen by exact module path (or, on the digits UNet, by the
short names of ``LAYERS``): unlike a pattern such as diffusers' ``pag_applied_layers="blocks.1"``, which also
matches ``blocks.10``, a name here means one module.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from . import ddim, validate
from .attention import merge_heads, split_heads
from .guidance import as_labels
from .models import NULL_LABEL, load_classifier, load_digits_unet
from .schedules import linear_schedule

# The self-attention layers of the digits UNet (all at 4x4, the lowest resolution), by the names notebook 07 uses.
LAYERS = {
    "down.4x4": ("down_blocks.2.attentions.0",),
    "mid": ("mid_block.attentions.0",),
    "up.4x4": ("up_blocks.0.attentions.0", "up_blocks.0.attentions.1"),
}
DEFAULT_LAYERS = ("mid",)
STRATEGIES = ("identity", "uniform", "perturbed_v", "noised_input")
ATTENTION_STRATEGIES = STRATEGIES[:3]  # the ones that replace a self-attention processor


# --------------------------------------------------------------------------- self-attention, plain and perturbed

def to_tokens(attn, hidden_states: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature map -> (B, HW, C) tokens, group-normalised as the attention block does first.

    Tokens (B, N, C), the input of a transformer block's ``attn1``, pass through as they are (group norm if any).
    """
    if hidden_states.dim() == 3:
        tokens = hidden_states
    elif hidden_states.dim() == 4:
        batch, channels, height, width = hidden_states.shape
        tokens = hidden_states.view(batch, channels, height * width).transpose(1, 2)
    else:
        raise ValueError(f"self-attention input must be a feature map (B, C, H, W) or tokens (B, N, C), "
                         f"got shape {tuple(hidden_states.shape)}")
    if attn.group_norm is not None:
        tokens = attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2)
    return tokens


def split_heads_of(attn, x: torch.Tensor) -> torch.Tensor:
    """(B, N, heads * d) -> (B, heads, N, d) for a diffusers ``Attention`` (its ``heads``): ``attention.split_heads``."""
    return split_heads(x, attn.heads)


def attention_output(attn, tokens: torch.Tensor, strategy: str | None = None, v_noise: float = 1.0,
                     seed: int = 0) -> torch.Tensor:
    """The self-attention of a diffusers ``Attention`` on group-normalised tokens (B, N, C), before the output
    projection, with the attention map A = softmax(Q K^T / sqrt(d)) (strategy None) or a perturbation of it:

    - "identity":    A = I, so the output is V: each token keeps its appearance, sees no other token (PSA);
    - "uniform":     A = 1/N everywhere, so every token gets the mean of V;
    - "perturbed_v": A kept, V replaced by V + v_noise * std(V) * z (z seeded: the same at every call).
    """
    value = split_heads_of(attn, attn.to_v(tokens))
    if strategy == "identity":
        return merge_heads(value)
    if strategy == "uniform":
        return merge_heads(value.mean(dim=2, keepdim=True).expand_as(value))
    query, key = split_heads_of(attn, attn.to_q(tokens)), split_heads_of(attn, attn.to_k(tokens))
    if strategy == "perturbed_v":
        z = torch.randn(value.shape, generator=torch.Generator().manual_seed(seed)).to(value)
        value = value + v_noise * value.std() * z
    elif strategy is not None:
        raise ValueError(f"strategy must be one of {ATTENTION_STRATEGIES} or None, got {strategy!r}")
    return merge_heads(F.scaled_dot_product_attention(query, key, value))


def finish_attention(attn, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Output projection (linear, dropout), back to the input's layout ((B, C, H, W) or (B, N, C)), residual and
    rescale, as AttnProcessor2_0."""
    out = attn.to_out[1](attn.to_out[0](out))
    if residual.dim() == 4:
        out = out.transpose(1, 2).reshape(residual.shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def self_attention_block(attn, hidden_states: torch.Tensor, strategy: str | None = None, **kwargs) -> torch.Tensor:
    """What a self-attention processor returns for (B, C, H, W) maps or (B, N, C) tokens: diffusers' ``AttnProcessor2_0``
    when strategy is None, its perturbed version otherwise (``PAGIdentitySelfAttnProcessor2_0``'s perturbed half
    for "identity")."""
    out = attention_output(attn, to_tokens(attn, hidden_states), strategy, **kwargs)
    return finish_attention(attn, out, hidden_states)


class PerturbedSelfAttnProcessor:
    """An attention processor for the self-attention layers of a diffusers UNet that perturbs part of the batch.

    The batch is read as ``chunks`` equal chunks; the last is perturbed with ``strategy``, the others take the
    plain path. chunks=2 is diffusers' PAG layout [plain, perturbed]; chunks=3 is PAG + CFG's
    [unconditional, conditional, conditional perturbed]; chunks=1 perturbs the whole batch.
    """

    def __init__(self, strategy: str = "identity", chunks: int = 2, v_noise: float = 1.0, seed: int = 0):
        if strategy not in ATTENTION_STRATEGIES:
            raise ValueError(f"strategy must be one of {ATTENTION_STRATEGIES} for an attention processor, "
                             f"got {strategy!r} ('noised_input' perturbs the UNet's input, not a layer)")
        self.strategy, self.chunks = strategy, validate.positive_int("chunks", chunks)
        self.v_noise, self.seed = v_noise, seed

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.dim() not in (3, 4):
            raise ValueError("PerturbedSelfAttnProcessor handles unmasked self-attention on (B, C, H, W) maps or "
                             "(B, N, C) tokens (a transformer block's attn1), not cross-attention")
        if getattr(attn, "spatial_norm", None) is not None or getattr(attn, "norm_q", None) is not None:
            raise ValueError("PerturbedSelfAttnProcessor does not implement spatial_norm or norm_q / norm_k")
        batch = hidden_states.shape[0]
        if batch % self.chunks:
            raise ValueError(f"the batch ({batch}) must split into chunks = {self.chunks} equal parts: "
                             f"[plain, ..., perturbed]")
        n_plain = batch - batch // self.chunks
        plain, perturbed = hidden_states[:n_plain], hidden_states[n_plain:]
        outputs = [self_attention_block(attn, plain)] if n_plain else []
        outputs.append(self_attention_block(attn, perturbed, self.strategy, v_noise=self.v_noise, seed=self.seed))
        return torch.cat(outputs)


def self_attention_paths(model) -> list[str]:
    """The exact module paths of a diffusers model's self-attention layers: its ``Attention`` modules that are not
    cross-attention (UNet2DModel's attention blocks; a transformer block's ``attn1``, not its ``attn2``)."""
    return [path for path, module in model.named_modules()
            if hasattr(module, "to_q") and hasattr(module, "set_processor")
            and not getattr(module, "is_cross_attention", False)]


def attention_modules(unet, layers=DEFAULT_LAYERS) -> dict:
    """{module path: diffusers Attention} for the chosen self-attention layers, each matched exactly.

    ``layers``: the digits UNet's short names ("down.4x4", "mid", "up.4x4", see ``LAYERS``) and/or exact module
    paths from ``self_attention_paths(model)``, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn1".
    A path names one module: "blocks.1" is not "blocks.10".
    """
    if isinstance(layers, str):
        layers = (layers,)
    modules = dict(unet.named_modules())
    allowed = self_attention_paths(unet)
    found = {}
    for name in layers:
        paths = LAYERS[name] if name in LAYERS and all(p in modules for p in LAYERS[name]) else (name,)
        for path in paths:
            if path not in allowed:
                raise ValueError(f"unknown layer {name!r}: not a self-attention layer of this model (the digits "
                                 f"UNet's names are {list(LAYERS)}; exact paths: {allowed})")
            found[path] = modules[path]
    return found


@contextmanager
def perturbed_attention(unet, layers=DEFAULT_LAYERS, strategy: str = "identity", chunks: int = 2,
                        processor=None):
    """Inside the block, the chosen layers run ``processor`` (default: a PerturbedSelfAttnProcessor); the
    original processors come back afterwards, even after an error."""
    processor = processor or PerturbedSelfAttnProcessor(strategy, chunks)
    targets = attention_modules(unet, layers)
    saved = {path: module.processor for path, module in targets.items()}
    try:
        for module in targets.values():
            module.set_processor(processor)
        yield unet
    finally:
        for path, module in targets.items():
            module.set_processor(saved[path])


@torch.no_grad()
def attention_maps(unet, x_t: torch.Tensor, t, labels=None, layer: str = "mid") -> torch.Tensor:
    """The self-attention maps softmax(Q K^T / sqrt(d)) of a layer's first module: (B, heads, HW, HW)."""
    module = next(iter(attention_modules(unet, (layer,)).values()))
    seen = []
    hook = module.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        x_t = validate.floating("x_t", x_t)
        unet(x_t, validate.timesteps("t", t, 1000, batch=len(x_t)), class_labels=as_labels(labels, len(x_t)))
    finally:
        hook.remove()
    tokens = to_tokens(module, seen[0])
    query, key = split_heads_of(module, module.to_q(tokens)), split_heads_of(module, module.to_k(tokens))
    return (query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5).softmax(-1)


# --------------------------------------------------------------------------- the guidance formulas

def pag_combination(eps: torch.Tensor, eps_hat: torch.Tensor, s: float) -> torch.Tensor:
    """eps_tilde = eps + s (eps - eps_hat) (PAG eq. 10 with eq. 12's perturbed pass)."""
    validate.same_shape("eps", eps, "eps_hat", eps_hat)
    return eps + s * (eps - eps_hat)


def pag_cfg_combination(eps_null: torch.Tensor, eps_cond: torch.Tensor, eps_hat_cond: torch.Tensor,
                        w: float, s: float) -> torch.Tensor:
    """PAG + CFG (PAG paper, appendix): eps(x, null) + w (eps(x, c) - eps(x, null)) + s (eps(x, c) - eps_hat(x, c)).

    Here w multiplies the whole CFG difference, so w = 1 is the plain conditional model: it is notebook 06's
    lambda = 1 + w (diffusers' guidance_scale).
    """
    validate.same_shape("eps_null", eps_null, "eps_cond", eps_cond)
    validate.same_shape("eps_cond", eps_cond, "eps_hat_cond", eps_hat_cond)
    return eps_null + w * (eps_cond - eps_null) + s * (eps_cond - eps_hat_cond)


def pag_epsilon(model, x_t: torch.Tensor, t: torch.Tensor, s: float) -> torch.Tensor:
    """PAG's guided noise for any model(x, t) that perturbs the second half of its batch (diffusers' layout):
    one call on [x_t, x_t], split into eps and eps_hat, then eps + s (eps - eps_hat)."""
    eps, eps_hat = model(torch.cat([x_t, x_t]), torch.cat([t, t])).chunk(2)
    return pag_combination(eps, eps_hat, s)


def _noised(x_t: torch.Tensor, input_noise: float, seed: int) -> torch.Tensor:
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(seed)).to(x_t)
    return x_t + input_noise * z


@torch.no_grad()
def pag_predictions(unet, x_t: torch.Tensor, t, labels=None, layers=DEFAULT_LAYERS, strategy: str = "identity",
                    input_noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, eps_hat) from ONE forward pass of the batch [x_t, x_t] whose second half is perturbed.

    labels None means the null label (the unconditional model). strategy "noised_input" perturbs the second half's
    input instead, x_t + input_noise * z (z seeded), with the attention untouched.
    """
    x_t = validate.floating("x_t", x_t)
    t = validate.timesteps("t", t, 1000, batch=x_t.shape[0])
    labels = as_labels(labels, x_t.shape[0])
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "noised_input":
        out = unet(torch.cat([x_t, _noised(x_t, input_noise, int(t[0]))]), t.repeat(2),
                   class_labels=labels.repeat(2)).sample
    else:
        with perturbed_attention(unet, layers, strategy, chunks=2):
            out = unet(torch.cat([x_t, x_t]), t.repeat(2), class_labels=labels.repeat(2)).sample
    eps, eps_hat = out.chunk(2)
    return eps, eps_hat


@torch.no_grad()
def pag_cfg_predictions(unet, x_t: torch.Tensor, t, labels, layers=DEFAULT_LAYERS, strategy: str = "identity"):
    """(eps(x, null), eps(x, c), eps_hat(x, c)) from ONE forward pass of [x_t, x_t, x_t] with labels
    [null, c, c], the last chunk perturbed: diffusers' PAGCFGIdentitySelfAttnProcessor2_0 layout."""
    x_t = validate.floating("x_t", x_t)
    batch = x_t.shape[0]
    t = validate.timesteps("t", t, 1000, batch=batch)
    labels = as_labels(labels, batch)
    null = torch.full_like(labels, NULL_LABEL)
    with perturbed_attention(unet, layers, strategy, chunks=3):
        out = unet(torch.cat([x_t, x_t, x_t]), t.repeat(3), class_labels=torch.cat([null, labels, labels])).sample
    return out.chunk(3)


def guided_eps_model(unet, s: float, layers=DEFAULT_LAYERS, strategy: str = "identity", labels=None,
                     w: float | None = None, t_range: tuple[int, int] | None = None):
    """eps_model(x_t, t) for ``ddim.ddim_sample``: PAG at scale s (and CFG at scale w when w is given).

    Without w the model is unconditional (null label; ``labels`` ignored). With w it is PAG + CFG on ``labels``.
    s = 0 and no w costs one pass; PAG two; PAG + CFG three, always in one batch. ``t_range = (lo, hi)`` applies
    PAG only for lo <= t <= hi (the plain prediction elsewhere).
    """
    def eps_model(x_t, t):
        active = s != 0 and (t_range is None or t_range[0] <= int(t[0]) <= t_range[1])
        if w is None:
            if not active:
                return unet(x_t, t, class_labels=as_labels(None, len(x_t))).sample
            return pag_combination(*pag_predictions(unet, x_t, t, None, layers, strategy), s)
        if not active:
            y = as_labels(labels, len(x_t))
            eps_null, eps_cond = unet(torch.cat([x_t, x_t]), t.repeat(2),
                                      class_labels=torch.cat([torch.full_like(y, NULL_LABEL), y])).sample.chunk(2)
            return eps_null + w * (eps_cond - eps_null)
        return pag_cfg_combination(*pag_cfg_predictions(unet, x_t, t, labels, layers, strategy), w, s)
    return eps_model


def pag_sampler(s: float, layers=DEFAULT_LAYERS, steps: int = 20, strategy: str = "identity",
                w: float | None = None, unet=None, t_range=None, batch_size: int = 250, progress: bool = False):
    """fn(labels, seed) -> samples in [-1, 1] for ``course.fid``: DDIM (eta = 0, ``steps`` steps) with PAG.

    Unconditional when w is None: the labels only set how many samples to draw (score with
    ``fid.evaluate(samples)``, without labels). With w, PAG + CFG on the given labels.
    """
    unet = unet if unet is not None else load_digits_unet()
    attention_modules(unet, layers)  # fail now on a bad layer name, not inside the sampler
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    schedule = linear_schedule()

    def sample(labels, seed: int = 0):
        return ddim.sample_in_batches(lambda y: guided_eps_model(unet, s, layers, strategy, y, w, t_range), labels,
                                      schedule, steps, seed=seed, batch_size=batch_size, progress=progress)
    return sample


# --------------------------------------------------------------------------- structure measures

def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """Mean |finite-difference gradient| per image: a sharpness measure (higher = crisper strokes)."""
    images = validate.floating("images", images)
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
    return (dx + dy) / 2


@torch.no_grad()
def classifier_confidence(images: torch.Tensor, classifier=None) -> torch.Tensor:
    """The digit classifier's top softmax probability per image: how clearly a sample is one digit."""
    classifier = classifier if classifier is not None else load_classifier()
    return classifier(validate.floating("images", images).clamp(-1, 1)).softmax(1).max(1).values
