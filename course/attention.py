"""Attention (notebook 01): scaled dot-product, multi-head, self- and cross-attention, positional encoding.

Bahdanau's additive attention and its seq2seq task are in :mod:`course.seq2seq`.

Shapes follow ``torch.nn.functional.scaled_dot_product_attention``: queries ``(..., L, d_k)``,
keys ``(..., S, d_k)``, values ``(..., S, d_v)``; a boolean mask is True where a query *may*
attend, a float mask is added to the logits. Sequences are batch-first, ``(B, L, D)``.

The sinusoidal positional encoding lives in :mod:`course.models`, where notebooks 03+ use it
as the timestep embedding; it is re-exported here under the same name.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import validate
from .models import sinusoid_frequencies, sinusoidal_embedding  # re-exported: one positional/timestep embedding

__all__ = [
    "sinusoidal_embedding", "positional_encoding", "positional_shift_matrix",
    "attention_logits", "attention_weights", "scaled_dot_product_attention", "causal_mask",
    "split_heads", "merge_heads", "multi_head_attention", "MultiHeadAttention", "TransformerBlock",
    "SpatialCrossAttention", "cross_attention", "softmax_entropy",
]


# --------------------------------------------------------------------------- positional encoding

def positional_encoding(n_positions: int, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """PE(p) for p = 0, ..., n_positions - 1 (Vaswani et al. 2017, sec. 3.5): shape (n_positions, dim).

    The same function as the diffusion timestep embedding, ``sinusoidal_embedding(t, dim)``,
    evaluated at integer positions; channels are ``[cos(p w_i), sin(p w_i)]``.
    """
    validate.positive_int("n_positions", n_positions)
    validate.positive_int("dim", dim)
    return sinusoidal_embedding(torch.arange(n_positions), dim, max_period)


def positional_shift_matrix(offset: int, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """The (dim, dim) matrix M with PE(p) @ M = PE(p + offset) for every p.

    Vaswani et al. chose sinusoids because PE(p + k) is a linear function of PE(p): each (cos, sin)
    pair at frequency w_i is rotated by the angle k w_i.
    """
    freqs = sinusoid_frequencies(dim, max_period)
    cos, sin = torch.cos(offset * freqs), torch.sin(offset * freqs)
    top = torch.cat([torch.diag(cos), torch.diag(sin)], dim=1)
    bottom = torch.cat([-torch.diag(sin), torch.diag(cos)], dim=1)
    return torch.cat([top, bottom], dim=0)


# --------------------------------------------------------------------------- scaled dot-product attention

def _check_query_key_value(query, key, value=None):
    query = validate.floating("query", query)
    key = validate.floating("key", key)
    if query.dim() < 2 or key.dim() < 2:
        raise ValueError(f"query and key must have shape (..., tokens, d_k), got {tuple(query.shape)} "
                         f"and {tuple(key.shape)}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query and key must have the same head dimension d_k (their last axis), "
                         f"got {query.shape[-1]} and {key.shape[-1]}")
    if value is not None:
        value = validate.floating("value", value)
        if value.dim() < 2 or value.shape[-2] != key.shape[-2]:
            raise ValueError(f"key and value must hold the same number of tokens (axis -2), got key "
                             f"{tuple(key.shape)} and value {tuple(value.shape)}")
    return query, key, value


def _check_mask(mask, logits_shape) -> torch.Tensor | None:
    if mask is None:
        return None
    mask = validate.as_tensor("mask", mask)
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(f"mask must be boolean (True = may attend) or float (added to the logits), "
                         f"got dtype {mask.dtype}")
    try:  # the mask may broadcast over the logits, but not enlarge them
        fits = torch.broadcast_shapes(mask.shape, logits_shape) == tuple(logits_shape)
    except RuntimeError:
        fits = False
    if not fits:
        L, S = logits_shape[-2:]
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the attention logits' shape "
                         f"{tuple(logits_shape)}; give one entry per (query, key) pair, for example ({L}, {S})")
    return mask


def attention_logits(query, key, scale: float | None = None) -> torch.Tensor:
    """Q K^T * scale, shape (..., L, S); ``scale`` defaults to 1 / sqrt(d_k) (Vaswani et al., eq. 1)."""
    query, key, _ = _check_query_key_value(query, key)
    if scale is None:
        scale = 1 / math.sqrt(query.shape[-1])
    return query @ key.transpose(-2, -1) * scale


def _masked(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return logits
    if mask.dtype == torch.bool:
        return logits.masked_fill(~mask, float("-inf"))
    return logits + mask.to(logits.dtype)


def attention_weights(query, key, mask=None, scale: float | None = None) -> torch.Tensor:
    """alpha = softmax_j(Q K^T / sqrt(d_k)), each query's row sums to 1 over the keys: shape (..., L, S)."""
    logits = attention_logits(query, key, scale)
    return torch.softmax(_masked(logits, _check_mask(mask, logits.shape)), dim=-1)


def scaled_dot_product_attention(query, key, value, mask=None, scale: float | None = None) -> torch.Tensor:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V (Vaswani et al. 2017, eq. 1): shape (..., L, d_v).

    ``mask`` is boolean (True where a query may attend) or float (added to the logits), and must
    broadcast to (..., L, S), as in ``torch.nn.functional.scaled_dot_product_attention``.
    """
    query, key, value = _check_query_key_value(query, key, value)
    return attention_weights(query, key, mask, scale) @ value


def causal_mask(n_queries: int, n_keys: int | None = None) -> torch.Tensor:
    """Boolean (n_queries, n_keys) mask, True on and below the diagonal: token i sees tokens 0..i only."""
    validate.positive_int("n_queries", n_queries)
    n_keys = validate.positive_int("n_keys", n_keys if n_keys is not None else n_queries)
    return torch.ones(n_queries, n_keys, dtype=torch.bool).tril()


def softmax_entropy(weights: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """H(alpha) = -sum_j alpha_j log alpha_j in nats: log(S) for uniform weights, 0 for one-hot."""
    return -(weights * torch.log(weights.clamp_min(1e-30))).sum(dim)


# --------------------------------------------------------------------------- multi-head attention

def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, h * d) -> (B, h, L, d): head i owns channels i*d .. (i+1)*d - 1."""
    B, L, D = x.shape
    return x.reshape(B, L, num_heads, D // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, h, L, d) -> (B, L, h * d): Concat(head_1, ..., head_h)."""
    B, h, L, d = x.shape
    return x.transpose(1, 2).reshape(B, L, h * d)


def _check_projections(query, key, value, W_q, W_k, W_v, W_o, num_heads):
    validate.positive_int("num_heads", num_heads)
    for name, x in (("query", query), ("key", key), ("value", value)):
        if x.dim() != 3:
            raise ValueError(f"{name} must have shape (batch, tokens, channels), got {tuple(x.shape)}")
    if key.shape[:2] != value.shape[:2]:
        raise ValueError(f"key and value must have the same batch and number of tokens, got "
                         f"{tuple(key.shape)} and {tuple(value.shape)}")
    for name, W, x in (("W_q", W_q, query), ("W_k", W_k, key), ("W_v", W_v, value)):
        if W.dim() != 2 or W.shape[0] != x.shape[-1]:
            raise ValueError(f"{name} must have shape ({x.shape[-1]}, inner_dim) to project the "
                             f"{x.shape[-1]} channels of its input, got {tuple(W.shape)}")
    inner = W_q.shape[1]
    if W_k.shape[1] != inner or W_v.shape[1] != inner:
        raise ValueError(f"mismatched head dimensions: W_q, W_k and W_v must project to the same inner "
                         f"dimension (num_heads * d_k), got {W_q.shape[1]}, {W_k.shape[1]} and {W_v.shape[1]}")
    if inner % num_heads:
        raise ValueError(f"the inner dimension {inner} does not split into num_heads = {num_heads} heads "
                         f"of equal size; choose num_heads dividing {inner}")
    if W_o.dim() != 2 or W_o.shape[0] != inner:
        raise ValueError(f"W_o must have shape ({inner}, out_dim), got {tuple(W_o.shape)}")


def _head_mask(mask, batch: int, num_heads: int, L: int, S: int):
    """Accept (L, S), (B, L, S) or (B, h, L, S) masks and give them a head axis."""
    if mask is None:
        return None
    mask = validate.as_tensor("mask", mask)
    if mask.dim() == 3:
        mask = mask[:, None]
    return _check_mask(mask, (batch, num_heads, L, S))


def multi_head_attention(query, key, value, W_q, W_k, W_v, W_o, num_heads: int, mask=None,
                         return_weights: bool = False):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    Vaswani et al. 2017, sec. 3.2.2. ``query`` (B, L, D_q), ``key``/``value`` (B, S, D_kv);
    W_q (D_q, h d_k), W_k and W_v (D_kv, h d_k), W_o (h d_k, D_out); head i uses columns
    i d_k .. (i+1) d_k - 1 of each projection. ``mask``: (L, S), (B, L, S) or (B, h, L, S).
    Returns (B, L, D_out), and the per-head weights (B, h, L, S) if ``return_weights``.
    """
    query, key, value = (validate.floating(n, x) for n, x in (("query", query), ("key", key), ("value", value)))
    _check_projections(query, key, value, W_q, W_k, W_v, W_o, num_heads)
    B, L, S = query.shape[0], query.shape[1], key.shape[1]
    mask = _head_mask(mask, B, num_heads, L, S)
    q, k, v = (split_heads(x @ W, num_heads) for x, W in ((query, W_q), (key, W_k), (value, W_v)))
    weights = attention_weights(q, k, mask)
    out = merge_heads(weights @ v) @ W_o
    return (out, weights) if return_weights else out


def _init_projection(fan_in: int, fan_out: int, generator: torch.Generator | None) -> nn.Parameter:
    bound = math.sqrt(6 / (fan_in + fan_out))  # Glorot uniform, as nn.MultiheadAttention
    return nn.Parameter((torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with the projections stored as in the paper: ``x @ W``.

    Self-attention when called with one sequence, cross-attention when ``key`` (and ``value``)
    come from another. ``kdim`` is the channel count of the key/value sequence (for example a
    text embedding), ``head_dim`` the size d_k of each head (default embed_dim / num_heads).
    """

    def __init__(self, embed_dim: int, num_heads: int, kdim: int | None = None, head_dim: int | None = None,
                 out_dim: int | None = None, seed: int = 0):
        super().__init__()
        validate.positive_int("embed_dim", embed_dim)
        validate.positive_int("num_heads", num_heads)
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(f"embed_dim = {embed_dim} does not split into num_heads = {num_heads} heads; "
                                 f"choose num_heads dividing it, or give head_dim")
            head_dim = embed_dim // num_heads
        self.num_heads, self.head_dim = num_heads, head_dim
        kdim, out_dim, inner = kdim or embed_dim, out_dim or embed_dim, num_heads * head_dim
        gen = torch.Generator().manual_seed(seed)
        self.W_q = _init_projection(embed_dim, inner, gen)
        self.W_k = _init_projection(kdim, inner, gen)
        self.W_v = _init_projection(kdim, inner, gen)
        self.W_o = _init_projection(inner, out_dim, gen)

    def forward(self, query, key=None, value=None, mask=None, return_weights: bool = False):
        key = query if key is None else key
        value = key if value is None else value
        return multi_head_attention(query, key, value, self.W_q, self.W_k, self.W_v, self.W_o,
                                    self.num_heads, mask, return_weights)

    def head_logits(self, query, key=None) -> torch.Tensor:
        """The scaled logits Q_i K_i^T / sqrt(d_k) of every head, shape (B, h, L, S)."""
        key = query if key is None else key
        q, k = split_heads(query @ self.W_q, self.num_heads), split_heads(key @ self.W_k, self.num_heads)
        return attention_logits(q, k)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> "MultiHeadAttention":
        """Copy the weights of a bias-free ``nn.MultiheadAttention`` (torch stores ``W x``, we store ``x W``)."""
        if mha.in_proj_bias is not None or mha.out_proj.bias is not None:
            raise ValueError("copy only a bias-free nn.MultiheadAttention (bias=False)")
        ours = cls(mha.embed_dim, mha.num_heads, kdim=mha.kdim)
        if mha._qkv_same_embed_dim:
            W_q, W_k, W_v = mha.in_proj_weight.detach().chunk(3)
        else:
            W_q, W_k, W_v = (w.detach() for w in (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
        with torch.no_grad():
            for mine, theirs in ((ours.W_q, W_q), (ours.W_k, W_k), (ours.W_v, W_v),
                                 (ours.W_o, mha.out_proj.weight.detach())):
                mine.copy_(theirs.T)
        return ours


class TransformerBlock(nn.Module):
    """x <- LayerNorm(x + MultiHead(x)); x <- LayerNorm(x + FFN(x)) (Vaswani et al. 2017, sec. 3.1, post-norm)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int | None = None, seed: int = 0):
        super().__init__()
        self.attention = MultiHeadAttention(dim, num_heads, seed=seed)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim or 4 * dim), nn.ReLU(), nn.Linear(ffn_dim or 4 * dim, dim))

    def forward(self, x, mask=None):
        x = self.norm1(x + self.attention(x, mask=mask))
        return self.norm2(x + self.ffn(x))


# --------------------------------------------------------------------------- the bridge to the UNet

class SpatialCrossAttention(nn.Module):
    """Cross-attention from a feature map to tokens, as in a text-conditioned UNet (Rombach et al. 2022, eq. 3).

    Q = phi(z) W_q with phi(z) the H*W pixel features of (B, C, H, W); K = tau W_k, V = tau W_v from
    token embeddings tau (B, N, D_text). ``token_weights`` (N,) rescales each token's attention
    after the softmax, prompt-to-prompt's re-weighting (Hertz et al. 2022, sec. 3.2).
    Returns the (B, C_out, H, W) attention output (the UNet adds it to its input, a residual) and the
    (B, H*W, N) weights, re-weighted if asked.
    """

    def __init__(self, channels: int, text_dim: int, head_dim: int = 32, out_channels: int | None = None,
                 seed: int = 0):
        super().__init__()
        self.attention = MultiHeadAttention(channels, 1, kdim=text_dim, head_dim=head_dim,
                                            out_dim=out_channels or channels, seed=seed)

    def forward(self, feature_map, tokens, token_weights=None):
        feature_map = validate.floating("feature_map", feature_map)
        tokens = validate.floating("tokens", tokens)
        if feature_map.dim() != 4 or tokens.dim() != 3 or feature_map.shape[0] != tokens.shape[0]:
            raise ValueError(f"feature_map must be (B, C, H, W) and tokens (B, N, D) with the same B, got "
                             f"{tuple(feature_map.shape)} and {tuple(tokens.shape)}")
        if token_weights is not None:
            token_weights = validate.floating("token_weights", token_weights)
            if token_weights.shape != (tokens.shape[1],):
                raise ValueError(f"token_weights needs one weight per token, shape ({tokens.shape[1]},), "
                                 f"got {tuple(token_weights.shape)}")
        a = self.attention
        return cross_attention(feature_map, tokens, a.W_q, a.W_k, a.W_v, a.W_o, token_weights)


def cross_attention(feature_map: torch.Tensor, tokens: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor,
                    W_v: torch.Tensor, W_o: torch.Tensor, token_weights: torch.Tensor | None = None):
    """Single-head cross-attention from the pixels of a (B, C, H, W) feature map to (B, N, D) tokens.

    Q = phi(z) W_q (one query per pixel), K = tau W_k, V = tau W_v; returns softmax(Q K^T / sqrt(d)) V W_o as
    (B, C_out, H, W), without the residual, and the (B, H*W, N) weights (re-weighted by ``token_weights``).
    """
    B, C, H, W = feature_map.shape
    pixels = feature_map.flatten(2).transpose(1, 2)  # (B, H*W, C): one query per pixel
    weights = attention_weights(pixels @ W_q, tokens @ W_k)  # (B, H*W, N)
    if token_weights is not None:
        weights = weights * token_weights
    out = weights @ (tokens @ W_v) @ W_o
    return out.transpose(1, 2).reshape(B, -1, H, W), weights
