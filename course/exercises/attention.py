"""Checkers for notebook 01: scaled dot-product attention and multi-head attention.

Both compare the student's function with torch's own (``F.scaled_dot_product_attention``,
``nn.MultiheadAttention`` with the same weights). When an answer is wrong, they recompute the
usual mistakes (no 1/sqrt(d_k), softmax over the queries, the mask ignored or inverted, heads
split the wrong way...) and, if the answer matches one of them, say which.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import attention
from .core import ExerciseFailed, call_student, compare, passed


def _matches(got, candidate) -> bool:
    return (isinstance(got, torch.Tensor) and got.shape == candidate.shape
            and bool(torch.isfinite(got).all())
            and torch.allclose(got.detach().double(), candidate.double(), atol=1e-4, rtol=1e-3))


def _compare_with_hints(exercise: str, got, expected, case: str, mistakes, atol=None, rtol=None, mask=None):
    """compare(); on failure, name the first known mistake whose output the student's matches."""
    try:
        compare(exercise, "output", got, expected, case, atol=atol, rtol=rtol)
    except ExerciseFailed as failure:
        nan_hint = _non_finite_hint(got, expected, mask)
        if nan_hint:
            raise ExerciseFailed(exercise, f"{failure.message}\nhint: {nan_hint}") from None
        for hint, make_wrong_output in mistakes:
            if _matches(got, make_wrong_output()):
                raise ExerciseFailed(exercise, f"{failure.message}\nhint: {hint}") from None
        raise


def _non_finite_hint(got, expected, mask) -> str:
    """NaN rows in the output: the softmax of a row whose logits are all -inf. Say whether the mask is inverted."""
    if not (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.is_floating_point()) or \
            bool(torch.isfinite(got).all()):
        return ""
    bad_rows = ~torch.isfinite(got).all(dim=-1)  # one flag per query
    if mask is not None:
        inverted_blocks_all = mask.all(dim=-1)  # these queries have no key left once the mask is inverted
        try:
            inverted_blocks_all = inverted_blocks_all.expand_as(bad_rows)
        except RuntimeError:
            inverted_blocks_all = None
        if inverted_blocks_all is not None and bool(inverted_blocks_all.any()) and \
                torch.equal(bad_rows, inverted_blocks_all):
            return ("a fully masked row: is the mask inverted? The NaN rows are exactly the queries whose mask row "
                    "is all True; True marks the keys a query MAY attend to, so those queries should see every key. "
                    "Set the logits where mask is False (~mask) to -inf")
        return ("NaN in the output: the softmax of a row whose logits are all -inf (every key masked) is 0 / 0; "
                "check which pairs your mask blocks (True means the query may attend to the key)")
    return "NaN or inf in the output: look for a division by zero or an overflow before the softmax"


# --------------------------------------------------------------------------- scaled dot-product attention

def _weights_with(logits, mask, *, axis=-1, mask_mode="right"):
    """Softmax weights from logits, with one of the usual mask mistakes."""
    blocked = -1e9  # not -inf: an inverted mask may block a whole row, and -inf would give NaN
    if mask is not None and mask_mode == "right":
        logits = logits.masked_fill(~mask, blocked)
    elif mask is not None and mask_mode == "inverted":
        logits = logits.masked_fill(mask, blocked)
    elif mask is not None and mask_mode == "zero":
        logits = logits.masked_fill(~mask, 0.0)
    weights = torch.softmax(logits, dim=axis)
    if mask is not None and mask_mode == "after":
        weights = weights * mask
    return weights


def _sdpa_mistakes(q, k, v, mask):
    d_k = q.shape[-1]
    logits = q @ k.transpose(-2, -1)

    def out(scale=1 / math.sqrt(d_k), **kw):
        return lambda: _weights_with(logits * scale, mask, **kw) @ v

    mistakes = [
        (f"your output matches attention without the scale: divide Q K^T by sqrt(d_k) = sqrt({d_k})", out(1.0)),
        (f"you divided Q K^T by d_k = {d_k}; divide by its square root", out(1 / d_k)),
        ("your weights sum to 1 over the queries: take the softmax over the keys, the last axis (dim=-1), "
         "so that each query's weights sum to 1", out(axis=-2)),
    ]
    if mask is not None:
        mistakes += [
            ("your output matches attention with no mask: set the logits of the pairs where mask is False "
             "to -inf before the softmax", out(mask_mode="none")),
            ("the mask is True where a query MAY attend (as in F.scaled_dot_product_attention); "
             "you blocked the opposite pairs", out(mask_mode="inverted")),
            ("you zeroed the masked weights after the softmax, so the rows no longer sum to 1: "
             "mask the logits (with -inf) before the softmax", out(mask_mode="after")),
            ("masked logits must become -inf (or a very negative number), not 0: exp(0) = 1 still counts",
             out(mask_mode="zero")),
        ]
    return mistakes


def _sdpa_cases(seed: int = 0):
    """(description, query, key, value, mask) covering shapes, masks and dtypes."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape, dtype=torch.float32: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    padding = torch.rand(3, 4, 7, generator=gen) > 0.4
    padding[..., 0] = True  # every query keeps at least one key
    one_key = torch.zeros(6, 6, dtype=torch.bool)
    one_key[torch.arange(6), torch.randperm(6, generator=gen)] = True
    return [
        ("one sequence: 4 queries, 6 keys, d_k = 8, d_v = 5, no mask", randn(4, 8), randn(6, 8), randn(6, 5), None),
        ("a batch of 3, 5 queries and 5 keys, d_k = d_v = 16, no mask",
         randn(3, 5, 16), randn(3, 5, 16), randn(3, 5, 16), None),
        ("batch 2, 4 heads, 6 queries, 9 keys, d_k = 8, d_v = 3, no mask",
         randn(2, 4, 6, 8), randn(2, 4, 9, 8), randn(2, 4, 9, 3), None),
        ("a causal (5, 5) mask on a batch of 2, d_k = 16",
         randn(2, 5, 16), randn(2, 5, 16), randn(2, 5, 16), attention.causal_mask(5)),
        ("a (3, 4, 7) padding-like mask, one per sequence, d_k = 8",
         randn(3, 4, 8), randn(3, 7, 8), randn(3, 7, 4), padding),
        ("each query may attend to exactly one key: the output is that key's value",
         randn(2, 6, 4), randn(2, 6, 4), randn(2, 6, 4), one_key),
        ("d_k = 64 with a causal mask over batch 2 and 2 heads",
         randn(2, 2, 6, 64), randn(2, 2, 6, 64), randn(2, 2, 6, 8), attention.causal_mask(6)),
        ("float64 inputs, 3 queries and 8 keys, causal-style (3, 8) mask",
         randn(3, 8, dtype=torch.float64), randn(8, 8, dtype=torch.float64), randn(8, 2, dtype=torch.float64),
         attention.causal_mask(3, 8)),
    ]


def check_scaled_dot_product_attention(student_fn) -> None:
    """Check ``scaled_dot_product_attention(query, key, value, mask=None)`` against
    ``torch.nn.functional.scaled_dot_product_attention``, with and without a boolean mask."""
    name = "scaled_dot_product_attention"
    cases = _sdpa_cases()
    for case, q, k, v, mask in cases:
        args = (q.clone(), k.clone(), v.clone()) + ((mask.clone(),) if mask is not None else ())
        got = call_student(name, student_fn, case, *args)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        _compare_with_hints(name, got, expected, case, _sdpa_mistakes(q, k, v, mask), mask=mask)
    passed(name, len(cases), "against F.scaled_dot_product_attention: batches, heads, causal and padding masks, "
                             "float64")


# --------------------------------------------------------------------------- multi-head attention

def _mha_output(query, key, value, W_q, W_k, W_v, W_o, h, mask, *, scale_dim=None, axis=-1, mask_mode="right",
                split="right", merge_mode=None, use_W_o=True):
    """Multi-head attention, right or with one of the usual mistakes (the split and the merge may differ)."""
    merge_mode = split if merge_mode is None else merge_mode

    def heads(x):
        B, L, D = x.shape
        if split == "right":
            return x.reshape(B, L, h, D // h).transpose(1, 2)
        if split == "no_transpose":  # (B, L, D) read straight as (B, h, L, d): heads mix tokens
            return x.reshape(B, h, L, D // h)
        return x.reshape(B, L, D // h, h).permute(0, 3, 1, 2)  # interleaved: channel c goes to head c % h

    def merge(x):
        B, _, L, d = x.shape
        if merge_mode == "right":
            return x.transpose(1, 2).reshape(B, L, h * d)
        if merge_mode == "no_transpose":
            return x.reshape(B, L, h * d)
        return x.permute(0, 2, 3, 1).reshape(B, L, h * d)

    q, k, v = heads(query @ W_q), heads(key @ W_k), heads(value @ W_v)
    scale = 1 / math.sqrt(scale_dim or q.shape[-1])
    weights = _weights_with(q @ k.transpose(-2, -1) * scale, mask, axis=axis, mask_mode=mask_mode)
    out = merge(weights @ v)
    return out @ W_o if use_W_o else out


def _mha_mistakes(args, h, mask):
    query, key, value, W_q, W_k, W_v, W_o = args
    inner = W_q.shape[1]

    def out(**kw):
        return lambda: _mha_output(*args, h, mask, **kw)

    mistakes = [
        (f"your output matches attention without the scale: divide each head's Q K^T by sqrt(d_k) = "
         f"sqrt({inner // h})", out(scale_dim=1)),
        (f"you scaled by sqrt({inner}), the width of all heads together; each head divides by its own "
         f"sqrt(d_k) = sqrt({inner} / {h})", out(scale_dim=inner)) if h > 1 else None,
        ("your weights sum to 1 over the queries: take the softmax over the keys, the last axis",
         out(axis=-2)),
        ("heads are split the wrong way: reshape (B, L, h*d_k) to (B, L, h, d_k) and then transpose to "
         "(B, h, L, d_k); reshaping straight to (B, h, L, d_k) mixes tokens across heads",
         out(split="no_transpose")) if h > 1 else None,
        ("heads are split the wrong way: head i owns channels i*d_k .. (i+1)*d_k - 1, so reshape (B, L, D) to "
         "(B, L, h, d_k), not (B, L, d_k, h)", out(split="interleaved")) if h > 1 else None,
        ("the heads are split right but merged the wrong way: transpose (B, h, L, d_k) back to (B, L, h, d_k) "
         "before reshaping to (B, L, h*d_k); reshaping (B, h, L, d_k) straight to (B, L, h*d_k) mixes tokens",
         out(merge_mode="no_transpose")) if h > 1 else None,
        ("the heads are merged right but split the wrong way: reshape (B, L, h*d_k) to (B, L, h, d_k) and then "
         "transpose to (B, h, L, d_k); reshaping straight to (B, h, L, d_k) mixes tokens across heads",
         out(split="no_transpose", merge_mode="right")) if h > 1 else None,
        ("the heads are merged right but split the wrong way: head i owns channels i*d_k .. (i+1)*d_k - 1, so "
         "reshape (B, L, D) to (B, L, h, d_k), not (B, L, d_k, h)", out(split="interleaved", merge_mode="right"))
        if h > 1 else None,
        ("the heads are split right but merged the wrong way: head i's output goes to channels i*d_k .. "
         "(i+1)*d_k - 1, so transpose to (B, L, h, d_k) before reshaping, not to (B, L, d_k, h)",
         out(merge_mode="interleaved")) if h > 1 else None,
        ("the concatenated heads still need the output projection: multiply by W_o", out(use_W_o=False))
        if W_o.shape[0] == W_o.shape[1] else None,
    ]
    if mask is not None:
        mistakes += [
            ("your output matches attention with no mask: set the logits where mask is False to -inf "
             "before the softmax, in every head", out(mask_mode="none")),
            ("the mask is True where a query MAY attend (nn.MultiheadAttention's attn_mask uses the opposite "
             "convention); you blocked the opposite pairs", out(mask_mode="inverted")),
            ("you zeroed the masked weights after the softmax: mask the logits before it", out(mask_mode="after")),
        ]
    return [m for m in mistakes if m is not None]


def _torch_mha(D, h, kdim, gen):
    """A bias-free nn.MultiheadAttention with seeded weights, and the same weights as x @ W matrices."""
    mha = nn.MultiheadAttention(D, h, bias=False, batch_first=True, kdim=kdim, vdim=kdim)
    with torch.no_grad():
        for p in mha.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    mha.eval()
    ours = attention.MultiHeadAttention.from_torch(mha)
    return mha, tuple(w.detach().clone() for w in (ours.W_q, ours.W_k, ours.W_v, ours.W_o))


def _mha_cases(seed: int = 0):
    """(description, D, heads, kdim, B, L, S, self_attention, mask)."""
    padding = torch.ones(6, 9, dtype=torch.bool)
    padding[:, -3:] = False
    return [
        ("self-attention: 2 sequences of 5 tokens, D = 16, 4 heads, no mask", 16, 4, 16, 2, 5, 5, True, None),
        ("self-attention with a causal (5, 5) mask, D = 16, 4 heads", 16, 4, 16, 2, 5, 5, True,
         attention.causal_mask(5)),
        ("cross-attention: 6 queries with D = 16 attend to 9 tokens with 12 channels, 2 heads, no mask",
         16, 2, 12, 2, 6, 9, False, None),
        ("cross-attention with the last 3 of 9 keys masked out (padding), 4 heads", 16, 4, 12, 3, 6, 9, False,
         padding),
        ("a single head, D = 8, causal mask", 8, 1, 8, 2, 4, 4, True, attention.causal_mask(4)),
        ("8 heads of size 4, D = 32, causal mask", 32, 8, 32, 1, 7, 7, True, attention.causal_mask(7)),
    ]


def check_multi_head_attention(student_fn) -> None:
    """Check ``multi_head_attention(query, key, value, W_q, W_k, W_v, W_o, num_heads, mask=None)``
    against ``torch.nn.MultiheadAttention`` with the same weights, to 1e-5."""
    name = "multi_head_attention"
    gen = torch.Generator().manual_seed(0)
    cases = _mha_cases()
    for case, D, h, kdim, B, L, S, self_attention, mask in cases:
        mha, weights = _torch_mha(D, h, kdim, gen)
        query = torch.randn(B, L, D, generator=gen)
        key = query if self_attention else torch.randn(B, S, kdim, generator=gen)
        with torch.no_grad():
            expected = mha(query, key, key, attn_mask=None if mask is None else ~mask, need_weights=False)[0]
        args = (query, key, key) + weights
        student_args = tuple(x.clone() for x in args) + (h,) + ((mask.clone(),) if mask is not None else ())
        got = call_student(name, student_fn, case, *student_args)
        _compare_with_hints(name, got, expected, case, _mha_mistakes(args, h, mask), atol=1e-5, rtol=1e-5,
                            mask=mask)
    passed(name, len(cases), "against nn.MultiheadAttention to 1e-5: self- and cross-attention, 1 to 8 heads, "
                             "causal and padding masks")
