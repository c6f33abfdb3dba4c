"""Checkers for notebook 07: the perturbed self-attention (identity map) and the PAG combination."""
from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, PAGIdentitySelfAttnProcessor2_0

from .. import pag
from ..models import load_digits_unet, sinusoidal_embedding
from .core import ExerciseFailed, call_student, compare, passed


def _attention(seed: int, channels: int, heads: int, groups: int | None, residual: bool, rescale: float) -> Attention:
    """A diffusers self-attention block with seeded random weights, configured like a UNet's."""
    torch.manual_seed(seed)
    attn = Attention(channels, heads=heads, dim_head=channels // heads, norm_num_groups=groups, bias=True,
                     residual_connection=residual, rescale_output_factor=rescale, upcast_softmax=True,
                     _from_deprecated_attn_block=True)
    with torch.no_grad():
        for param in attn.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return attn.eval()


def _psa_cases():
    unet = load_digits_unet()
    modules = dict(unet.named_modules())
    gen = torch.Generator().manual_seed(0)
    cases = [("the digits UNet's mid-block attention, feature maps (3, 64, 4, 4)",
              modules["mid_block.attentions.0"], torch.randn(3, 64, 4, 4, generator=gen)),
             ("the digits UNet's first up-block attention, one feature map (1, 64, 4, 4)",
              modules["up_blocks.0.attentions.0"], torch.randn(1, 64, 4, 4, generator=gen)),
             ("a random attention block: 4 heads, group norm, residual, rescale_output_factor = 2, maps (2, 32, 6, 5)",
              _attention(1, 32, 4, 4, True, 2.0), torch.randn(2, 32, 6, 5, generator=gen)),
             ("a random attention block without group norm or residual connection, maps (2, 16, 3, 3)",
              _attention(2, 16, 2, None, False, 1.0), torch.randn(2, 16, 3, 3, generator=gen))]
    return cases


def _diffusers_perturbed(attn, hidden_states):
    """The perturbed half of diffusers' PAGIdentitySelfAttnProcessor2_0 on the batch [h, h]."""
    with torch.no_grad():
        both = PAGIdentitySelfAttnProcessor2_0()(attn, torch.cat([hidden_states, hidden_states]))
    return both.chunk(2)[1]


def _variants(attn, h):
    """Plausible mistakes, each with the hint that names it."""
    def finish(out, residual=True, rescale=True, project=True):
        if project:
            out = attn.to_out[1](attn.to_out[0](out))
        out = out.transpose(1, 2).reshape(h.shape)
        if residual and attn.residual_connection:
            out = out + h
        return out / attn.rescale_output_factor if rescale else out

    tokens = h.flatten(2).transpose(1, 2)
    normed = pag.to_tokens(attn, h)
    with torch.no_grad():
        yield (AttnProcessor2_0()(attn, h.clone()),
               "this is the ordinary attention softmax(Q K^T / sqrt(d)) V. With the identity map each token attends "
               "only to itself, so the attention output is V = attn.to_v(tokens) itself: no Q, no K, no softmax")
        if attn.residual_connection:
            yield (finish(attn.to_v(normed), residual=False),
                   "the residual is missing: attn.residual_connection is True, so add the input hidden_states "
                   "back before dividing by attn.rescale_output_factor")
        if attn.group_norm is not None:
            yield (finish(attn.to_v(tokens)),
                   "the values come from un-normalised tokens: apply attn.group_norm to the (B, C, HW) features "
                   "before attn.to_v, as the plain processor does")
        yield (finish(attn.to_v(normed), project=False),
               "the output projection is missing: pass V through attn.to_out[0] (linear) and attn.to_out[1] "
               "(dropout)")
        if attn.rescale_output_factor != 1:
            yield (finish(attn.to_v(normed), rescale=False),
                   "divide the result by attn.rescale_output_factor (it is "
                   f"{attn.rescale_output_factor:g} here)")
            if attn.residual_connection:
                yield (finish(attn.to_v(normed), residual=False) + h,
                       "add the residual first, then divide the sum by attn.rescale_output_factor (the source's "
                       "order)")
        if tuple(normed.shape[-1:]) == tuple(attn.to_out[0].weight.shape[-1:]):
            yield (finish(normed),
                   "with A = I the output is V = attn.to_v(tokens), not the tokens themselves: keep to_v")
        if attn.heads > 1:
            value = attn.to_v(normed)
            batch, tokens_n, inner = value.shape
            heads = value.view(batch, -1, attn.heads, inner // attn.heads).transpose(1, 2)
            yield (finish(heads.reshape(batch, tokens_n, inner)),
                   "the heads are merged without transposing back: (B, heads, N, d) must become (B, N, heads, d) "
                   "before the reshape to (B, N, heads * d), as in the source; or skip the split and the merge, "
                   "which cancel when A = I")


def check_perturbed_self_attention(student_fn) -> None:
    """Check ``perturbed_self_attention(attn, hidden_states)`` against diffusers' PAGIdentitySelfAttnProcessor2_0."""
    name = "perturbed_self_attention"
    cases = _psa_cases()
    for case, attn, h in cases:
        with torch.no_grad():
            got = call_student(name, student_fn, case, attn, h.clone())
        expected = _diffusers_perturbed(attn, h)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and \
                not torch.allclose(got, expected, atol=1e-5, rtol=1e-5):
            for wrong, hint in _variants(attn, h):
                if torch.allclose(got, wrong, atol=1e-5, rtol=1e-5):
                    raise ExerciseFailed(name, f"{hint}\nwhile checking: {case}")
        compare(name, "the perturbed self-attention output", got, expected, case, atol=1e-5, rtol=1e-5)
    passed(name, len(cases), "against diffusers' PAGIdentitySelfAttnProcessor2_0, UNet and random blocks")


class _HalfPerturbedModel(torch.nn.Module):
    """A seeded toy model(x, t) with diffusers' PAG layout: the second half of the batch is 'perturbed'.

    It records the batch size of every call, so the checker can tell whether both passes went in one batch.
    """

    def __init__(self, shape, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        dim = int(torch.tensor(shape).prod())
        self.weight = torch.randn(dim, dim, generator=gen) / dim ** 0.5
        self.time = torch.randn(8, dim, generator=gen)
        self.calls = []

    def forward(self, x, t):
        self.calls.append(len(x))
        if len(x) % 2 or len(t) != len(x):
            raise ValueError(f"the model expects the batch [x_t, x_t] (an even batch) with one t per sample; "
                             f"got {len(x)} samples and {len(t)} timesteps")
        flat = x.flatten(1)
        out = flat @ self.weight + sinusoidal_embedding(t, 8) @ self.time
        half = len(x) // 2
        out = torch.cat([out[:half], 0.6 * out[half:] + 0.3 * torch.tanh(flat[half:])])  # eps_hat differs
        return out.reshape(x.shape)


def _combination_cases(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for s, shape in [(2.5, (3, 1, 4, 4)), (1.0, (4, 1, 4, 4)), (0.0, (2, 2, 3, 3)), (-0.5, (5, 6))]:
        t = torch.randint(0, 1000, (shape[0],), generator=gen)
        cases.append((f"s = {s:g}, x_t of shape {shape}", s, torch.randn(shape, generator=gen), t))
    return cases


def check_pag_epsilon(student_fn) -> None:
    """Check ``pag_epsilon(model, x_t, t, s)``: one batched call, then eps + s (eps - eps_hat)."""
    name = "pag_epsilon"
    cases = _combination_cases()
    for i, (case, s, x_t, t) in enumerate(cases):
        model = _HalfPerturbedModel(x_t.shape[1:], seed=i)
        got = call_student(name, student_fn, case, model, x_t.clone(), t.clone(), s)
        calls = list(model.calls)
        if calls != [2 * len(x_t)]:
            raise ExerciseFailed(name, f"the model was called {len(calls)} time(s) with batch sizes {calls}; call "
                                       f"it once on the batch [x_t, x_t] of {2 * len(x_t)} samples (and [t, t]): "
                                       f"its first half is the plain pass, its second the perturbed one"
                                       f"\nwhile checking: {case}")
        eps, eps_hat = model(torch.cat([x_t, x_t]), torch.cat([t, t])).chunk(2)
        expected = pag.pag_combination(eps, eps_hat, s)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and s != 0 and \
                not torch.allclose(got, expected, atol=1e-5):
            for wrong, hint in [(eps, "this is the plain prediction eps, with no guidance: add s (eps - eps_hat)"),
                                (eps_hat + s * (eps_hat - eps), "eps and eps_hat are swapped: the first half of the "
                                 "model's output is the plain pass eps, the second half the perturbed eps_hat; "
                                 "start from eps and move away from eps_hat"),
                                (eps - s * (eps - eps_hat), "the sign of the guidance term is flipped: "
                                 "eps + s (eps - eps_hat) moves away from the perturbed prediction"),
                                (eps_hat + s * (eps - eps_hat), "start from the plain prediction eps, not eps_hat: "
                                 "eps_tilde = eps + s (eps - eps_hat)")]:
                if torch.allclose(got, wrong, atol=1e-5):
                    raise ExerciseFailed(name, f"{hint}\nwhile checking: {case}")
        compare(name, "eps_tilde", got, expected, case, t=t, atol=1e-5, rtol=1e-5)
    passed(name, len(cases), "one batched pass, s = 2.5, 1, 0 and negative s, image and flat shapes")
