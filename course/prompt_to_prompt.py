"""Prompt-to-prompt in miniature (Hertz et al. 2022; notebook 08): read and edit the cross-attention of the
text-conditioned latent UNet while it samples: per-token maps, re-weighting a word, and injecting one prompt's
maps into another's sampling (the word swap that keeps the layout).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .ddim import ddim_sample
from .ldm import decode, encode_prompts, latent_eps_model
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
                          seed: int = 0, z_T=None, token_weights=None, inject=None, inject_fraction: float = 0.6):
    """Text-to-image with the cross-attention recorded (and edited if asked); returns (images, control).

    With several prompts and ``z_T=None`` every prompt starts from the same noise (seeded), as prompt-to-prompt needs.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    n = len(prompts)
    if z_T is None:
        z_T = torch.randn((1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size),
                          generator=torch.Generator().manual_seed(seed)).expand(n, -1, -1, -1).clone()
    control = CrossAttentionControl(n, token_weights, inject, inject_fraction)
    control.total_steps = steps
    context, null_context = encode_prompts(text_encoder, prompts), encode_prompts(text_encoder, [""] * n)
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
