"""Notebook 01: the attention references, their input checks, the widget, and the two checkers with wrong answers."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course import attention, models, seq2seq, widgets
from course.exercises import ExerciseFailed, check_multi_head_attention, check_scaled_dot_product_attention


# --------------------------------------------------------------------------- references

def _qkv(*shape_q, S=7, d_v=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    *lead, L, d_k = shape_q
    return (torch.randn(*shape_q, generator=gen), torch.randn(*lead, S, d_k, generator=gen),
            torch.randn(*lead, S, d_v, generator=gen))


@pytest.mark.parametrize("mask", [None, "bool", "float", "causal"])
def test_scaled_dot_product_attention_matches_torch(mask):
    q, k, v = _qkv(2, 3, 7, 8)
    if mask == "bool":
        mask = torch.rand(2, 1, 7, 7, generator=torch.Generator().manual_seed(1)) > 0.3
        mask[..., 0] = True
    elif mask == "float":
        mask = torch.randn(7, 7)
    elif mask == "causal":
        mask = attention.causal_mask(7)
    ours = attention.scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_weights_sum_to_one_over_the_keys_and_the_causal_mask_hides_the_future():
    q, k, _ = _qkv(2, 5, 8, S=5)
    weights = attention.attention_weights(q, k, mask=attention.causal_mask(5))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    assert (weights.triu(1) == 0).all()
    x = torch.randn(1, 6, 8)
    changed = x.clone()
    changed[:, 3:] = torch.randn(1, 3, 8)
    mask = attention.causal_mask(6)
    out = attention.scaled_dot_product_attention(x, x, x, mask)
    out_changed = attention.scaled_dot_product_attention(changed, changed, changed, mask)
    torch.testing.assert_close(out[:, :3], out_changed[:, :3])
    assert attention.causal_mask(2, 4).tolist() == [[True, False, False, False], [True, True, False, False]]


@pytest.mark.parametrize("kdim, heads", [(16, 4), (12, 2), (16, 1)])
def test_multi_head_attention_matches_nn_multiheadattention(kdim, heads):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, heads, bias=False, batch_first=True, kdim=kdim, vdim=kdim).eval()
    ours = attention.MultiHeadAttention.from_torch(mha)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 9, kdim)
    key = x if kdim == 16 else context
    mask = torch.ones(5, key.shape[1], dtype=torch.bool).tril()
    with torch.no_grad():
        expected = mha(x, key, key, attn_mask=~mask, need_weights=False)[0]
        got, weights = ours(x, key, mask=mask, return_weights=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert weights.shape == (2, heads, 5, key.shape[1])


def test_self_and_cross_attention_shapes_and_the_transformer_block():
    b, a = torch.randn(2, 6, 32), torch.randn(2, 9, 16)
    assert attention.MultiHeadAttention(32, 4)(b).shape == (2, 6, 32)
    out, weights = attention.MultiHeadAttention(32, 4, kdim=16)(b, a, return_weights=True)
    assert out.shape == (2, 6, 32) and weights.shape == (2, 4, 6, 9)  # the queries' length, not the keys'
    assert attention.TransformerBlock(32, 4)(b, mask=attention.causal_mask(6)).shape == (2, 6, 32)


def test_positional_encoding_is_the_timestep_embedding_and_shifts_linearly():
    from diffusers.models.embeddings import get_timestep_embedding

    assert attention.sinusoidal_embedding is models.sinusoidal_embedding
    t = torch.arange(0, 1000, 37)
    torch.testing.assert_close(attention.sinusoidal_embedding(t, 32),
                               get_timestep_embedding(t, 32, flip_sin_to_cos=True, downscale_freq_shift=0))
    pe = attention.positional_encoding(40, 16)
    torch.testing.assert_close(pe, models.sinusoidal_embedding(torch.arange(40), 16))
    for offset in (-2, 1, 5):
        shifted = pe @ attention.positional_shift_matrix(offset, 16)
        lo, hi = max(0, -offset), 40 - max(0, offset)
        torch.testing.assert_close(shifted[lo:hi], pe[lo + offset:hi + offset], atol=1e-5, rtol=0)


def test_spatial_cross_attention_reweighting_changes_only_where_the_token_is_attended():
    torch.manual_seed(0)
    layer = attention.SpatialCrossAttention(channels=8, text_dim=6, head_dim=8)
    feature_map, tokens = torch.randn(1, 8, 4, 5), torch.randn(1, 3, 6)
    with torch.no_grad():
        out, weights = layer(feature_map, tokens)
        boosted, _ = layer(feature_map, tokens, token_weights=torch.tensor([1.0, 3.0, 1.0]))
    assert out.shape == (1, 8, 4, 5) and weights.shape == (1, 20, 3)
    change = (boosted - out).flatten(2).norm(dim=1)[0]  # per pixel
    # the change at each pixel is 2 * alpha_pixel,token1 * |value of token 1| (W_o applied): proportional to the map
    expected = 2 * weights[0, :, 1] * (tokens[0, 1] @ layer.attention.W_v @ layer.attention.W_o).norm()
    torch.testing.assert_close(change, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="one weight per token"):
        layer(feature_map, tokens, token_weights=torch.ones(4))


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, message", [
    (lambda: attention.scaled_dot_product_attention(torch.randn(2, 5, 8), torch.randn(2, 7, 6), torch.randn(2, 7, 4)),
     "same head dimension d_k"),
    (lambda: attention.scaled_dot_product_attention(torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 6, 4)),
     "same number of tokens"),
    (lambda: attention.scaled_dot_product_attention(torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 4),
                                                    mask=attention.causal_mask(5)),
     r"mask of shape \(5, 5\) does not broadcast"),
    (lambda: attention.attention_weights(torch.randn(5, 8), torch.randn(7, 8), mask=torch.ones(1, 1, 5, 7).bool()),
     "does not broadcast"),
    (lambda: attention.attention_weights(torch.randn(5, 8), torch.randn(7, 8), mask=torch.ones(5, 7, dtype=torch.long)),
     "boolean"),
    (lambda: attention.scaled_dot_product_attention(torch.ones(5, 8, dtype=torch.long), torch.randn(7, 8),
                                                    torch.randn(7, 4)),
     "floating-point"),
    (lambda: attention.multi_head_attention(torch.randn(2, 5, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16),
                                            torch.randn(16, 16), torch.randn(16, 12), torch.randn(16, 16),
                                            torch.randn(16, 16), 4),
     "mismatched head dimensions"),
    (lambda: attention.multi_head_attention(torch.randn(2, 5, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16),
                                            torch.randn(16, 12), torch.randn(16, 12), torch.randn(16, 12),
                                            torch.randn(12, 16), 5),
     "does not split into num_heads = 5"),
    (lambda: attention.multi_head_attention(torch.randn(2, 5, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16),
                                            torch.randn(12, 16), torch.randn(16, 16), torch.randn(16, 16),
                                            torch.randn(16, 16), 4),
     r"W_q must have shape \(16, inner_dim\)"),
    (lambda: attention.MultiHeadAttention(16, 4)(torch.randn(2, 5, 16), mask=torch.ones(5, 4, dtype=torch.bool)),
     r"mask of shape \(5, 4\) does not broadcast"),
    (lambda: attention.MultiHeadAttention(10, 3), "does not split into num_heads = 3"),
    (lambda: attention.positional_shift_matrix(1, 7), "even"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------- the toy seq2seq

def test_reversal_batch_and_seq2seq_shapes():
    src, target = seq2seq.reversal_batch(4, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(target, src.flip(1))
    for use_attention in (True, False):
        logits, weights = seq2seq.Seq2Seq(attention=use_attention)(src)
        assert logits.shape == (4, 6, 10) and weights.shape == (4, 6, 6)
    _, weights = seq2seq.Seq2Seq(attention=True)(src)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 6))


@pytest.mark.slow
def test_attention_learns_the_anti_diagonal_and_beats_the_fixed_context():
    """The notebook's recipe: 400 steps each. Attention reverses 12 digits; the fixed context does not."""
    with_attention, fixed = seq2seq.Seq2Seq(attention=True), seq2seq.Seq2Seq(attention=False)
    seq2seq.train_seq2seq(with_attention, steps=400, progress=False)
    seq2seq.train_seq2seq(fixed, steps=400, progress=False)
    acc_att = seq2seq.accuracy_by_length(with_attention, [4, 12])
    acc_fixed = seq2seq.accuracy_by_length(fixed, [4, 12])
    assert acc_att[4] > 0.98 and acc_att[12] > 0.95
    assert acc_fixed[4] > 0.9 and acc_fixed[12] < 0.75
    src, _ = seq2seq.reversal_batch(200, 10, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, alpha = with_attention(src)
    assert (alpha.argmax(-1) == torch.arange(9, -1, -1)).float().mean() > 0.9


# --------------------------------------------------------------------------- the widget

def test_attention_explorer_reacts_to_every_control_and_caches_views():
    logits = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))
    explorer = widgets.AttentionExplorer(logits, list("abcd"), list("vwxyz"), head_names=["one", "two"])
    first, taus = explorer.image.value, len(explorer.temperature.options)
    assert explorer.render_count == taus  # warmed: the first view at every tau, so moving tau first only swaps
    explorer.temperature.value = 0.1
    sharp = explorer.image.value
    assert explorer.render_count == taus
    explorer.query.value = 2
    explorer.head.value = 1
    assert len({first, sharp, explorer.image.value}) == 3
    explorer.head.value, explorer.query.value, explorer.temperature.value = 0, 0, 1.0
    assert explorer.image.value == first and explorer.render_count == taus + 2  # cached: nothing redrawn
    torch.testing.assert_close(explorer.weights(1, 2.0), torch.softmax(logits[1] / 2, -1))
    assert attention.softmax_entropy(explorer.weights(0, 10.0)).mean() > attention.softmax_entropy(
        explorer.weights(0, 0.1)).mean()
    with pytest.raises(ValueError, match="query labels"):
        widgets.AttentionExplorer(logits, list("abc"), list("vwxyz"))


# --------------------------------------------------------------------------- checker: scaled dot-product attention

def sdpa_right(query, key, value, mask=None):
    logits = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=-1) @ value


def sdpa_wrong(scale="sqrt", axis=-1, mask_mode="right", transpose=False):
    def wrong(query, key, value, mask=None):
        d_k = query.shape[-1]
        logits = query @ (key.T if transpose else key.transpose(-2, -1))
        logits = logits / {"sqrt": math.sqrt(d_k), "none": 1.0, "d_k": d_k}[scale]
        if mask is not None and mask_mode == "right":
            logits = logits.masked_fill(~mask, -1e9)
        if mask is not None and mask_mode == "inverted":
            logits = logits.masked_fill(mask, -1e9)
        weights = torch.softmax(logits, dim=axis)
        if mask is not None and mask_mode == "after":
            weights = weights * mask
        return weights @ value
    return wrong


def test_sdpa_checker_passes_the_reference_and_torch(capsys):
    check_scaled_dot_product_attention(sdpa_right)
    check_scaled_dot_product_attention(lambda q, k, v, mask=None: F.scaled_dot_product_attention(q, k, v, mask))
    check_scaled_dot_product_attention(attention.scaled_dot_product_attention)
    assert capsys.readouterr().out.count("scaled_dot_product_attention: all 8 cases pass") == 3


@pytest.mark.parametrize("wrong, message", [
    (sdpa_wrong(scale="none"), "without the scale"),
    (sdpa_wrong(scale="d_k"), "divide by its square root"),
    (sdpa_wrong(axis=-2), "sum to 1 over the queries"),
    (sdpa_wrong(mask_mode="ignored"), "with no mask"),
    (sdpa_wrong(mask_mode="inverted"), "MAY attend"),
    (sdpa_wrong(mask_mode="after"), "after the softmax"),
    (lambda q, k, v: sdpa_right(q, k, v), "raised TypeError"),  # forgot the mask argument
    (sdpa_wrong(transpose=True), "raised RuntimeError"),  # key.T reverses every axis of a batch
    (lambda q, k, v, mask=None: sdpa_right(q, k, v, mask).numpy(), "should be a torch.Tensor"),
    (lambda q, k, v, mask=None: sdpa_right(q.float(), k.float(), v.float(), mask), "dtype"),
    (lambda q, k, v, mask=None: torch.softmax(q @ k.transpose(-2, -1), -1), "shape"),  # forgot V
    (lambda *args: (_ for _ in ()).throw(NotImplementedError()), "not implemented yet"),
])
@pytest.mark.filterwarnings("ignore:The use of `x.T`")
def test_sdpa_checker_rejects_wrong_answers(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_scaled_dot_product_attention(wrong)


# --------------------------------------------------------------------------- checker: multi-head attention

def mha_right(query, key, value, W_q, W_k, W_v, W_o, num_heads, mask=None, scale_dim=None, axis=-1,
              use_mask=True, split="right", use_W_o=True):
    def heads(x):
        B, L, D = x.shape
        if split == "no_transpose":  # the classic slip: view as (B, h, L, d) without the transpose
            return x.reshape(B, num_heads, L, D // num_heads)
        return x.reshape(B, L, num_heads, D // num_heads).transpose(1, 2)

    q, k, v = heads(query @ W_q), heads(key @ W_k), heads(value @ W_v)
    logits = q @ k.transpose(-2, -1) / math.sqrt(scale_dim or q.shape[-1])
    if mask is not None and use_mask:
        logits = logits.masked_fill(~mask, float("-inf"))
    out = torch.softmax(logits, dim=axis) @ v
    B, h, L, d = out.shape
    out = out.reshape(B, L, h * d) if split == "no_transpose" else out.transpose(1, 2).reshape(B, L, h * d)
    return out @ W_o if use_W_o else out


def mha_wrong(**mistake):
    def wrong(query, key, value, W_q, W_k, W_v, W_o, num_heads, mask=None):
        return mha_right(query, key, value, W_q, W_k, W_v, W_o, num_heads, mask, **mistake)
    return wrong


def test_mha_checker_passes_the_reference(capsys):
    check_multi_head_attention(mha_right)
    check_multi_head_attention(attention.multi_head_attention)
    assert capsys.readouterr().out.count("multi_head_attention: all 6 cases pass") == 2


def _transposed_W_q(query, key, value, W_q, W_k, W_v, W_o, num_heads, mask=None):
    return mha_right(query, key, value, W_q.T, W_k, W_v, W_o, num_heads, mask)


@pytest.mark.parametrize("wrong, message", [
    (mha_wrong(scale_dim=1), "without the scale"),
    (mha_wrong(scale_dim=16), "the width of all heads together"),
    (mha_wrong(axis=-2), "sum to 1 over the queries"),
    (mha_wrong(use_mask=False), "with no mask"),
    (mha_wrong(split="no_transpose"), "heads are split the wrong way"),
    (mha_wrong(use_W_o=False), "output projection"),
    (_transposed_W_q, "output differs"),
    (lambda *args, **kwargs: mha_right(*args[:8]), "with no mask"),  # accepts a mask and drops it
    (lambda *args: (_ for _ in ()).throw(NotImplementedError()), "not implemented yet"),
])
def test_mha_checker_rejects_wrong_answers(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_multi_head_attention(wrong)
