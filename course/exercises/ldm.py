"""Checkers for notebook 08: the VAE's reparameterisation and KL term, and a cross-attention conditioning layer."""
from __future__ import annotations

import math

import torch

from .. import ldm
from .core import ExerciseFailed, call_student, compare, passed


def _vae_cases():
    gen = torch.Generator().manual_seed(0)
    cases = []
    # batch sizes 3, 5, 4 (and a last case of 1): with batch 2, summing over the batch (2 KL) would equal forgetting
    # the 1/2 (also 2 KL), and one message would be given for the other mistake
    for shape, spread in [((3, 4, 8, 8), 1.0), ((5, 4, 8, 8), 3.0), ((4, 2, 4, 4), 0.3), ((1, 1, 1, 1), 2.0)]:
        mean = torch.randn(shape, generator=gen) * spread
        logvar = torch.randn(shape, generator=gen) * spread - 1.0
        eps = torch.randn(shape, generator=gen)
        cases.append((f"mean, logvar, eps of shape {shape}", mean, logvar, eps))
    return cases


def kl_mistakes(mean: torch.Tensor, logvar: torch.Tensor) -> list:
    """[(wrong kl, message)]: the KL terms students write instead of the reference, each with what to fix."""
    per_element = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar)

    def per_sample_mean(terms):
        return terms.flatten(1).sum(1).mean()

    return [(2 * per_element.flatten(1).sum(1).mean(), "the KL has a factor 1/2: 0.5 (mean^2 + sigma^2 - 1 - log sigma^2)"),
            (per_element.mean(), "sum the KL over each sample's elements (then average over the batch), do not "
                                 "average over elements"),
            (per_element.sum(), "average over the batch after summing over each sample's elements"),
            (per_sample_mean(0.5 * (mean.pow(2) + logvar.exp() - logvar)),
             "the KL has a -1 per element: 0.5 (mean^2 + sigma^2 - 1 - log sigma^2)"),
            (per_sample_mean(0.5 * (mean.pow(2) + logvar.exp() - 1 + logvar)),
             "the log term has a minus sign: - log sigma^2"),
            (per_sample_mean(0.5 * (mean.pow(2) + (0.5 * logvar).exp() - 1 - logvar)),
             "the variance term is sigma^2 = exp(logvar), not sigma"),
            (per_sample_mean(0.5 * (logvar.exp() - 1 - logvar)), "the KL has a mean^2 term: 0.5 (mean^2 + sigma^2 "
                                                                   "- 1 - log sigma^2)")]


def check_reparameterize_and_kl(student_fn) -> None:
    """Check ``reparameterize_and_kl(mean, logvar, eps) -> (z, kl)``: z = mean + exp(logvar / 2) eps, and
    kl = KL(N(mean, sigma^2) || N(0, I)) summed over each sample's elements, averaged over the batch."""
    name = "reparameterize_and_kl"
    cases = _vae_cases()
    for case, mean, logvar, eps in cases:
        mean_in, logvar_in = mean.clone().requires_grad_(True), logvar.clone().requires_grad_(True)
        result = call_student(name, student_fn, case, mean_in, logvar_in, eps.clone())
        if not isinstance(result, tuple) or len(result) != 2:
            raise ExerciseFailed(name, f"return a pair (z, kl), got {type(result).__name__}\nwhile checking: {case}")
        z, kl = result
        z_ref, kl_ref = ldm.reparameterize(mean, logvar, eps), ldm.kl_to_standard_normal(mean, logvar)
        if isinstance(z, torch.Tensor) and z.shape == z_ref.shape:
            for wrong, hint in [(mean + logvar.exp() * eps, "sigma = exp(logvar / 2): logvar is log sigma^2"),
                                (mean + logvar * eps, "logvar is log sigma^2: sigma = exp(logvar / 2)"),
                                (mean + (0.5 * logvar).exp(), "multiply sigma by eps")]:
                if torch.allclose(z.detach(), wrong, atol=1e-5):
                    raise ExerciseFailed(name, f"z: {hint}\nwhile checking: {case}")
        compare(name, "z", z, z_ref, case)
        if not isinstance(kl, torch.Tensor) or kl.dim() != 0:
            raise ExerciseFailed(name, "kl must be a scalar tensor: sum over each sample's elements, then average "
                                       f"over the batch\nwhile checking: {case}")
        for wrong, hint in kl_mistakes(mean, logvar):
            if not torch.isclose(wrong, kl_ref) and torch.isclose(kl.detach(), wrong, atol=1e-5, rtol=1e-5):
                raise ExerciseFailed(name, f"kl: {hint}\nwhile checking: {case}")
        compare(name, "kl", kl, kl_ref, case, atol=1e-4, rtol=1e-5)
        if not z.requires_grad or not kl.requires_grad:
            raise ExerciseFailed(name, "z and kl must stay differentiable in mean and logvar (that is the point of "
                                       "the trick): no detach or torch.no_grad()")
        grads = torch.autograd.grad(z.sum() + kl, [mean_in, logvar_in], allow_unused=True)
        m_ref, l_ref = mean.clone().requires_grad_(True), logvar.clone().requires_grad_(True)
        ref = torch.autograd.grad(ldm.reparameterize(m_ref, l_ref, eps).sum() + ldm.kl_to_standard_normal(m_ref, l_ref),
                                  [m_ref, l_ref])
        for label, g, r in zip(("mean", "logvar"), grads, ref):
            if g is None:
                raise ExerciseFailed(name, f"the result does not depend on {label}\nwhile checking: {case}")
            compare(name, f"the gradient with respect to {label}", g, r, case, atol=1e-4, rtol=1e-4)
    passed(name, len(cases), "z = mean + sigma eps, the KL summed per sample and averaged, gradients")


def _attention_cases():
    gen = torch.Generator().manual_seed(1)
    cases = []
    for B, C, H, W, N, D, d in [(2, 8, 4, 4, 5, 6, 4), (1, 16, 8, 8, 8, 64, 16), (3, 4, 2, 3, 3, 4, 8)]:
        feature_map = torch.randn(B, C, H, W, generator=gen)
        tokens = torch.randn(B, N, D, generator=gen)
        weights = [torch.randn(a, b, generator=gen) / math.sqrt(a) for a, b in ((C, d), (D, d), (D, d), (d, C))]
        cases.append((f"feature_map {tuple(feature_map.shape)}, tokens {tuple(tokens.shape)}, head dim {d}",
                      feature_map, tokens, weights))
    return cases


def _cross_attention_variant(feature_map, tokens, W_q, W_k, W_v, W_o, softmax_dim=-1, scaled=True, residual=True,
                             flat_reshape=False):
    B, C, H, W = feature_map.shape
    pixels = feature_map.flatten(2).transpose(1, 2)
    q, k, v = pixels @ W_q, tokens @ W_k, tokens @ W_v
    logits = q @ k.transpose(1, 2) / (math.sqrt(q.shape[-1]) if scaled else 1.0)
    out = torch.softmax(logits, dim=softmax_dim) @ v @ W_o
    out = out.reshape(B, C, H, W) if flat_reshape else out.transpose(1, 2).reshape(B, C, H, W)
    return feature_map + out if residual else out


def check_cross_attention_layer(student_fn) -> None:
    """Check ``cross_attention_layer(feature_map, tokens, W_q, W_k, W_v, W_o)`` against the reference."""
    name = "cross_attention_layer"
    cases = _attention_cases()
    for case, feature_map, tokens, (W_q, W_k, W_v, W_o) in cases:
        got = call_student(name, student_fn, case, feature_map.clone(), tokens.clone(), W_q, W_k, W_v, W_o)
        expected = ldm.cross_attention_layer(feature_map, tokens, W_q, W_k, W_v, W_o)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            for kwargs, hint in [({"softmax_dim": -2}, "the softmax runs over the tokens (each pixel's weights sum "
                                                       "to 1), not over the pixels"),
                                 ({"scaled": False}, "divide the logits by sqrt(d), d the head dimension"),
                                 ({"residual": False}, "the layer adds its output to its input: return "
                                                       "feature_map + attention output"),
                                 ({"flat_reshape": True}, "the output is (B, H*W, C): transpose it to (B, C, H*W) "
                                                          "before reshaping to (B, C, H, W)")]:
                wrong = _cross_attention_variant(feature_map, tokens, W_q, W_k, W_v, W_o, **kwargs)
                if torch.allclose(got.detach(), wrong, atol=1e-5) and not torch.allclose(wrong, expected, atol=1e-5):
                    raise ExerciseFailed(name, f"{hint}\nwhile checking: {case}")
        compare(name, "the output", got, expected, case, atol=1e-5, rtol=1e-4)
    # the text must matter: changing the tokens must change the output
    case, feature_map, tokens, weights = cases[0]
    other = call_student(name, student_fn, case, feature_map, tokens.flip(1) * 2, *weights)
    if torch.allclose(other, call_student(name, student_fn, case, feature_map, tokens, *weights)):
        raise ExerciseFailed(name, "the output does not change when the text changes: K and V come from the tokens")
    passed(name, len(cases), "Q from pixels, K and V from tokens, softmax over tokens, 1/sqrt(d), residual")
