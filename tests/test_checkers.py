"""Every checker passes the reference and rejects wrong answers with a message that says what is wrong."""
import numpy as np
import pytest
import torch

from course.exercises import ExerciseFailed, check_q_posterior, check_q_sample, check_to_model_range


def _per_sample(v, t, x):
    return v[t].reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype)


def q_sample_right(x_0, t, eps, alpha_bar):
    a = _per_sample(alpha_bar, t, x_0)
    return a.sqrt() * x_0 + (1 - a).sqrt() * eps


def q_posterior_right(x_0, x_t, t, betas, wrap_at_zero=False, variance_is_beta=False, swap=False):
    alphas = 1 - betas
    alpha_bar = torch.cumprod(alphas, 0)
    if wrap_at_zero:
        alpha_bar_prev = alpha_bar.roll(1)  # alpha_bar[t - 1] wraps to the last entry at t = 0
    else:
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=betas.dtype), alpha_bar[:-1]])
    c0 = alpha_bar_prev.sqrt() * betas / (1 - alpha_bar)
    ct = alphas.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
    if swap:
        c0, ct = ct, c0
    var = betas if variance_is_beta else (1 - alpha_bar_prev) / (1 - alpha_bar) * betas
    return _per_sample(c0, t, x_t) * x_0 + _per_sample(ct, t, x_t) * x_t, _per_sample(var, t, x_t)


def test_q_sample_reference_passes(capsys):
    check_q_sample(q_sample_right)
    assert "q_sample: all" in capsys.readouterr().out


def _no_sqrt(x_0, t, eps, alpha_bar):
    a = _per_sample(alpha_bar, t, x_0)
    return a * x_0 + (1 - a) * eps


def _alpha_not_alpha_bar(x_0, t, eps, alpha_bar):
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return q_sample_right(x_0, t, eps, alphas)


def _off_by_one(x_0, t, eps, alpha_bar):
    return q_sample_right(x_0, (t - 1).clamp(min=0), eps, alpha_bar)


def _keeps_float64(x_0, t, eps, alpha_bar):
    a = alpha_bar[t].reshape(-1, *[1] * (x_0.dim() - 1))
    return a.sqrt() * x_0 + (1 - a).sqrt() * eps


def _no_reshape(x_0, t, eps, alpha_bar):
    a = alpha_bar[t].to(x_0.dtype)
    return a.sqrt() * x_0 + (1 - a).sqrt() * eps


def _not_implemented(*args):
    raise NotImplementedError()


def _numpy_out(x_0, t, eps, alpha_bar):
    return q_sample_right(x_0, t, eps, alpha_bar).numpy()


def _only_right_for_2d(x_0, t, eps, alpha_bar):
    a = alpha_bar[t].reshape(-1, 1).to(x_0.dtype)
    if x_0.dim() != 2:
        raise RuntimeError("The size of tensor a must match the size of tensor b")
    return a.sqrt() * x_0 + (1 - a).sqrt() * eps


@pytest.mark.parametrize("wrong, message", [
    (_no_sqrt, "differs from the reference"),
    (_alpha_not_alpha_bar, "differs from the reference"),
    (_off_by_one, "wrong at timesteps"),
    (_keeps_float64, "dtype torch.float64"),
    (_no_reshape, "raised RuntimeError"),
    (_not_implemented, "not implemented yet"),
    (_numpy_out, "should be a torch.Tensor"),
    (_only_right_for_2d, "raised RuntimeError"),
    (lambda x_0, t, eps, a: x_0, "differs from the reference"),
])
def test_q_sample_rejects_wrong_answers(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_q_sample(wrong)


def test_off_by_one_message_names_the_timesteps():
    with pytest.raises(ExerciseFailed) as failure:
        check_q_sample(_off_by_one)
    assert "wrong at timesteps t = 44, 101" in failure.value.message
    assert "while checking: linear schedule" in failure.value.message
    rendered = "\n".join(failure.value._render_traceback_())
    assert "Traceback" not in rendered and "q_sample: not yet right" in rendered


def test_q_posterior_reference_passes(capsys):
    check_q_posterior(q_posterior_right)
    assert "q_posterior: all" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda *a: q_posterior_right(*a, wrap_at_zero=True), r"wrong at timesteps t = 0\n"),
    (lambda *a: q_posterior_right(*a, variance_is_beta=True), "variance differs"),
    (lambda *a: q_posterior_right(*a, swap=True), "mean differs"),
    (lambda *a: q_posterior_right(*a)[0], "return a tuple"),
    (lambda x_0, x_t, t, b: (q_posterior_right(x_0, x_t, t, b)[0], torch.ones(3)), "variance has shape"),
    (_not_implemented, "not implemented yet"),
])
def test_q_posterior_rejects_wrong_answers(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_q_posterior(wrong)


def test_to_model_range_checker():
    check_to_model_range(lambda p: p.float() / 127.5 - 1)
    for wrong, message in [
        (lambda p: p.float() / 255, "differs from the reference"),
        (lambda p: p.float() / 128 - 1, "differs from the reference"),
        (lambda p: p // 128, "dtype"),
        (lambda p: np.asarray(p, dtype=np.float32) / 127.5 - 1, "should be a torch.Tensor"),
    ]:
        with pytest.raises(ExerciseFailed, match=message):
            check_to_model_range(wrong)


# --------------------------------------------------------------------------- issue 20: what the checkers say

def _variance_is_beta_float32_only(x_0, x_t, t, betas):
    """sigma^2 = beta_t, the mistake the absolute tolerance used to pass in every float32 case."""
    mean, _ = q_posterior_right(x_0, x_t, t, betas)
    return mean, _per_sample(betas, t, x_t)


def _variance_in_float64(x_0, x_t, t, betas):
    mean, var = q_posterior_right(x_0, x_t, t, betas)
    alpha_bar = torch.cumprod(1 - betas, 0)
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=betas.dtype), alpha_bar[:-1]])
    return mean, ((1 - alpha_bar_prev) / (1 - alpha_bar) * betas)[t]  # float64, shape (B,)


def _variance_from_alphas(x_0, x_t, t, betas):
    """An equivalent formula: beta_tilde = beta_t - beta_t^2 alpha_bar_(t-1) / (1 - alpha_bar_t)... rearranged."""
    mean, _ = q_posterior_right(x_0, x_t, t, betas)
    alpha_bar = torch.cumprod(1 - betas, 0)
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=betas.dtype), alpha_bar[:-1]])
    var = 1 / (1 / (1 - alpha_bar_prev).clamp(min=1e-300) + (1 - betas) / betas)  # 1 / (1/(1-ab_prev) + alpha/beta)
    var = torch.where(alpha_bar_prev == 1, torch.zeros_like(var), var)
    return mean, _per_sample(var, t, x_t).float()


def test_q_posterior_variance_beta_is_caught_in_float32_with_a_hint():
    import course.exercises.forward as checker

    float32_only = [c for c in checker._cases(seed=1) if c[2].dtype == torch.float32]
    assert float32_only  # the float32 cases alone must catch it (the float64 case used to be the only one)
    with pytest.raises(ExerciseFailed) as failure:
        check_q_posterior(_variance_is_beta_float32_only)
    assert "variance differs" in failure.value.message
    assert "sigma_t^2 = beta_t" in failure.value.message
    assert "float64" not in failure.value.message.splitlines()[-1]  # caught before the float64 case


def test_q_posterior_accepts_a_float64_variance_and_an_equivalent_formula(capsys):
    check_q_posterior(_variance_in_float64)
    check_q_posterior(_variance_from_alphas)
    assert capsys.readouterr().out.count("q_posterior: all") == 2


def test_compare_prints_the_difference_and_the_tolerance():
    from course.exercises import compare

    expected = torch.tensor([0.0972888, 1.0], dtype=torch.float64)
    got = expected.clone()
    got[0] += 3e-8
    with pytest.raises(ExerciseFailed) as failure:
        compare("demo", "x", got, expected, "a float64 case")
    message = failure.value.message
    assert "got 0.09728883, expected 0.0972888 " in message  # enough digits to see the difference
    assert "difference 3e-08" in message and "allowed 1.07e-08" in message


def test_compare_does_not_call_one_timestep_both_wrong_and_right():
    from course.exercises import compare

    expected = torch.zeros(4, 2)
    got = expected.clone()
    got[1] = 1.0  # one of the three samples at t = 0 is wrong
    with pytest.raises(ExerciseFailed) as failure:
        compare("demo", "x", got, expected, "mixed", t=torch.tensor([0, 0, 0, 7]))
    message = failure.value.message
    assert "right at t = 0" not in message and "wrong at timesteps t = 0" not in message
    assert "at t = 0 some samples are right and others wrong" in message
    assert "right at t = 7" in message


# the Fréchet distance: a case where scipy's sqrtm turns complex

def test_frechet_checker_has_a_complex_sqrtm_case_and_catches_a_missing_real():
    import scipy.linalg

    import course.exercises.fid as checker
    from course import fid
    from course.exercises import check_frechet_distance

    _, mu_1, s_1, mu_2, s_2 = checker._rank_deficient_case(np.random.default_rng(0))
    assert np.iscomplexobj(scipy.linalg.sqrtm(s_1 @ s_2))

    def no_real(m1, s1, m2, s2):
        return ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2))

    with pytest.raises(ExerciseFailed, match=r"complex .*np.trace\(\.\.\.\)\.real") as failure:
        check_frechet_distance(no_real)
    assert "N = 20 samples in D = 32" in failure.value.message
    check_frechet_distance(fid.frechet_distance)  # the stable eigenvalue form is a right answer too


# label dropout: the generator must be used

def _drop_with(rand):
    def drop(labels, p_uncond, generator):
        out = labels.clone()
        out[rand(labels, generator) < p_uncond] = 10
        return out
    return drop


def test_drop_labels_rejects_an_answer_that_ignores_the_generator():
    from course.exercises import check_drop_labels

    for wrong in (_drop_with(lambda labels, g: torch.rand(labels.shape)),  # torch's global generator
                  _drop_with(lambda labels, g: torch.rand(labels.shape, generator=torch.Generator().manual_seed(0)))):
        with pytest.raises(ExerciseFailed, match="with the generator you are given"):
            check_drop_labels(wrong)


def test_drop_labels_accepts_other_ways_of_drawing_from_the_generator(capsys):
    from course.exercises import check_drop_labels

    def bernoulli(labels, p_uncond, generator):
        mask = torch.bernoulli(torch.full(labels.shape, float(p_uncond)), generator=generator).bool()
        return torch.where(mask, torch.full_like(labels, 10), labels)

    check_drop_labels(bernoulli)
    check_drop_labels(_drop_with(lambda labels, g: torch.rand(len(labels), generator=g, dtype=torch.float64)))
    assert capsys.readouterr().out.count("drop_labels: all") == 2


# attention: an inverted mask with -inf, and the head split and merge on their own

def _sdpa_inf(invert=False):
    def sdpa(query, key, value, mask=None):
        logits = query @ key.transpose(-2, -1) / query.shape[-1] ** 0.5
        if mask is not None:
            logits = logits.masked_fill(mask if invert else ~mask, float("-inf"))
        return torch.softmax(logits, dim=-1) @ value
    return sdpa


def test_sdpa_inverted_mask_with_minus_inf_is_named():
    from course.exercises import check_scaled_dot_product_attention

    check_scaled_dot_product_attention(_sdpa_inf())
    with pytest.raises(ExerciseFailed, match="a fully masked row: is the mask inverted?"):
        check_scaled_dot_product_attention(_sdpa_inf(invert=True))


def _mha(split="right", merge="right", invert=False):
    def mha(query, key, value, W_q, W_k, W_v, W_o, num_heads, mask=None):
        def heads(x):
            B, L, D = x.shape
            if split == "no_transpose":
                return x.reshape(B, num_heads, L, D // num_heads)
            return x.reshape(B, L, num_heads, D // num_heads).transpose(1, 2)
        q, k, v = heads(query @ W_q), heads(key @ W_k), heads(value @ W_v)
        logits = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        if mask is not None:
            logits = logits.masked_fill(mask if invert else ~mask, float("-inf"))
        out = torch.softmax(logits, dim=-1) @ v
        B, h, L, d = out.shape
        out = out.reshape(B, L, h * d) if merge == "no_transpose" else out.transpose(1, 2).reshape(B, L, h * d)
        return out @ W_o
    return mha


@pytest.mark.parametrize("kwargs, message", [
    (dict(split="no_transpose"), "merged right but split the wrong way"),
    (dict(merge="no_transpose"), "split right but merged the wrong way"),
    (dict(split="no_transpose", merge="no_transpose"), "heads are split the wrong way: reshape"),
    (dict(invert=True), "a fully masked row: is the mask inverted?"),
])
def test_mha_split_merge_and_inverted_mask_hints(kwargs, message):
    from course.exercises import check_multi_head_attention

    with pytest.raises(ExerciseFailed, match=message):
        check_multi_head_attention(_mha(**kwargs))


def test_mha_right_with_minus_inf_passes(capsys):
    from course.exercises import check_multi_head_attention

    check_multi_head_attention(_mha())
    assert "multi_head_attention: all" in capsys.readouterr().out


# classifier guidance: sqrt(alpha_bar) instead of sqrt(1 - alpha_bar)

def _guided(factor):
    def guided(eps, x_t, t, labels, classifier, w, alpha_bar):
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            log_p = -torch.nn.functional.cross_entropy(classifier(x, t), labels, reduction="sum")
            grad = torch.autograd.grad(log_p, x)[0]
        scale = factor(alpha_bar[t]).to(eps.dtype).reshape(-1, *[1] * (eps.dim() - 1))
        return eps - w * scale * grad
    return guided


def test_classifier_guided_eps_names_the_wrong_scale_and_accepts_cross_entropy(capsys):
    from course.exercises import check_classifier_guided_eps

    check_classifier_guided_eps(_guided(lambda a: (1 - a).sqrt()))  # the same gradient via cross_entropy
    assert "classifier_guided_eps: all" in capsys.readouterr().out
    with pytest.raises(ExerciseFailed, match=r"you scaled it by sqrt\(alpha_bar_t\)") as failure:
        check_classifier_guided_eps(_guided(lambda a: a.sqrt()))
    assert "log_softmax" not in failure.value.message


# l_simple: what the model was called with

def _l_simple(x_of=lambda a, x_0, eps: a.sqrt() * x_0 + (1 - a).sqrt() * eps, t_of=lambda t: t):
    def loss(eps_model, x_0, t, eps, alpha_bar):
        a = alpha_bar[t].reshape(-1, *[1] * (x_0.dim() - 1)).to(x_0.dtype)
        return torch.nn.functional.mse_loss(eps_model(x_of(a, x_0, eps), t_of(t)), eps)
    return loss


@pytest.mark.parametrize("wrong, message", [
    (_l_simple(t_of=lambda t: (t + 1).clamp(max=999)), r"eps_model was called with t = \["),
    (_l_simple(x_of=lambda a, x_0, eps: x_0), "eps_model was called on x_0 itself"),
    (_l_simple(x_of=lambda a, x_0, eps: a * x_0 + (1 - a) * eps), "take the square roots"),
    (_l_simple(x_of=lambda a, x_0, eps: (1 - a).sqrt() * x_0 + a.sqrt() * eps), "differs from sqrt"),
])
def test_l_simple_reports_what_the_model_was_called_with(wrong, message):
    from course.exercises import check_l_simple

    with pytest.raises(ExerciseFailed, match=message):
        check_l_simple(wrong)


def test_l_simple_with_the_right_call_but_a_wrong_loss_says_so():
    from course.exercises import check_l_simple

    def l1(eps_model, x_0, t, eps, alpha_bar):
        a = alpha_bar[t].reshape(-1, *[1] * (x_0.dim() - 1)).to(x_0.dtype)
        return (eps - eps_model(a.sqrt() * x_0 + (1 - a).sqrt() * eps, t)).abs().mean()

    with pytest.raises(ExerciseFailed, match="called with the right x_t and t"):
        check_l_simple(l1)
    check_l_simple(_l_simple())  # F.mse_loss is a right answer


# ddpm_step: the t = 0 wrap-around and a (B,) coefficient that is not reshaped

def _ddpm_step(wrap=False, per_sample=False):
    def step(eps, x_t, t, noise, betas):
        alphas = 1 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        prev = alpha_bar[t - 1] if wrap else (alpha_bar[t - 1] if t > 0 else torch.ones((), dtype=betas.dtype))
        coef = betas[t] / (1 - alpha_bar[t]).sqrt()
        if per_sample:
            coef = coef.repeat(len(x_t))  # one value per sample, shape (B,), and no reshape
        mean = (x_t - coef.to(x_t.dtype) * eps) / alphas[t].sqrt().to(x_t.dtype)
        if t == 0 and not wrap:
            return mean
        return mean + ((1 - prev) / (1 - alpha_bar[t]) * betas[t]).sqrt().to(x_t.dtype) * noise
    return step


def test_ddpm_step_names_the_wrap_around_and_the_missing_reshape():
    from course.exercises import check_ddpm_step

    with pytest.raises(ExerciseFailed, match=r"alpha_bar\[t - 1\] is alpha_bar\[-1\]"):
        check_ddpm_step(_ddpm_step(wrap=True))
    with pytest.raises(ExerciseFailed, match="raised RuntimeError") as failure:
        check_ddpm_step(_ddpm_step(per_sample=True))
    assert "t is one int in ddpm_step" in failure.value.message


def test_ddpm_step_accepts_alpha_bar_prev_with_a_leading_one(capsys):
    from course.exercises import check_ddpm_step

    def step(eps, x_t, t, noise, betas):  # no special case at t = 0: sigma_0 = 0 by itself
        alphas = 1 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        prev = torch.cat([torch.ones(1, dtype=betas.dtype), alpha_bar[:-1]])
        mean = (x_t - (betas[t] / (1 - alpha_bar[t]).sqrt()).float() * eps) / alphas[t].sqrt().float()
        return mean + ((1 - prev[t]) / (1 - alpha_bar[t]) * betas[t]).sqrt().float() * noise

    check_ddpm_step(_ddpm_step())
    check_ddpm_step(step)
    assert capsys.readouterr().out.count("ddpm_step: all") == 2


# the reverse-SDE step: sqrt(beta) without sqrt(ds)

def test_reverse_em_step_names_noise_without_sqrt_ds(capsys):
    import math

    from course.exercises import check_reverse_em_step

    def em(x, score, beta_s, ds, noise, noise_scale=lambda beta, ds: math.sqrt(beta) * math.sqrt(ds)):
        return x + (0.5 * beta_s * x + beta_s * score) * ds + noise_scale(beta_s, ds) * noise

    check_reverse_em_step(em)
    assert "reverse_em_step: all" in capsys.readouterr().out
    with pytest.raises(ExerciseFailed, match=r"scaled by g = sqrt\(beta\) alone"):
        check_reverse_em_step(lambda *a: em(*a, noise_scale=lambda beta, ds: math.sqrt(beta)))


# notebook 11's exercise 2: the Fréchet distance in the symmetric eigenvalue form

def _stable(clip=True, middle_of=None, sqrt_eigs=True, eig_of_product=False):
    def frechet(mu_1, sigma_1, mu_2, sigma_2):
        diff = mu_1 - mu_2
        if eig_of_product:  # an equivalent route: the eigenvalues of S_1 S_2 are real and >= 0
            eigs = np.clip(np.linalg.eigvals(sigma_1 @ sigma_2).real, 0, None)
        else:
            w, v = np.linalg.eigh(sigma_1)
            root = (v * np.sqrt(np.clip(w, 0, None) if clip else w)) @ v.T
            middle = (middle_of or (lambda r, s_1, s_2: r @ s_2 @ r))(root, sigma_1, sigma_2)
            eigs = np.linalg.eigvalsh(middle)
            eigs = np.clip(eigs, 0, None) if clip else eigs
        trace_sqrt = np.sqrt(eigs).sum() if sqrt_eigs else eigs.sum()
        return float(diff @ diff + np.trace(sigma_1) + np.trace(sigma_2) - 2 * trace_sqrt)
    return frechet


def test_stable_frechet_checker_accepts_the_eigenvalue_forms(capsys):
    from course import fid
    from course.exercises import check_stable_frechet_distance

    check_stable_frechet_distance(_stable())
    check_stable_frechet_distance(_stable(eig_of_product=True))
    check_stable_frechet_distance(lambda *a: np.float64(fid.frechet_distance(*a)))  # a numpy float is one number too
    assert capsys.readouterr().out.count("stable_frechet_distance: all") == 3


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("wrong, message", [
    (_stable(clip=False), "clip them at 0"),
    (_stable(sqrt_eigs=False), "sum of their square roots"),
    (_stable(middle_of=lambda r, s_1, s_2: s_1 @ s_2), "eigvalsh assumes a symmetric matrix"),
    (_stable(middle_of=lambda r, s_1, s_2: np.sqrt(np.abs(s_1)) @ s_2 @ np.sqrt(np.abs(s_1))), "element-wise"),
])
def test_stable_frechet_checker_names_the_usual_slips(wrong, message):
    from course.exercises import check_stable_frechet_distance

    with pytest.raises(ExerciseFailed, match=message):
        check_stable_frechet_distance(wrong)


def test_stable_frechet_checker_switches_sqrtm_off():
    import scipy.linalg

    from course.exercises import check_stable_frechet_distance

    def with_sqrtm(mu_1, s_1, mu_2, s_2):
        return float(((mu_1 - mu_2) ** 2).sum() + np.trace(s_1 + s_2) - 2 * np.trace(scipy.linalg.sqrtm(s_1 @ s_2)).real)

    with pytest.raises(ExerciseFailed, match="sqrtm is switched off during this check"):
        check_stable_frechet_distance(with_sqrtm)
    assert scipy.linalg.sqrtm.__module__.startswith("scipy")  # restored afterwards


# notebook 05's exercise 2: the Langevin corrector step and its step size

def _langevin(norm="batch_mean", factor=2.0, noise_factor=2.0, use_alpha=True, invert=False, sign=1.0):
    def step(x, score, noise, snr, alpha):
        def norms(v):
            return v.reshape(len(v), -1).norm(dim=-1)
        if norm == "batch_mean":
            ratio = norms(noise).mean() / norms(score).mean()
        elif norm == "per_sample":
            ratio = (norms(noise) / norms(score)).reshape(-1, *[1] * (x.dim() - 1))
        elif norm == "whole":
            ratio = noise.norm() / score.norm()
        else:  # root of the mean squares
            ratio = (norms(noise).pow(2).mean() / norms(score).pow(2).mean()).sqrt()
        if invert:
            ratio = 1 / ratio
        eps = factor * (alpha if use_alpha else 1.0) * (snr * ratio) ** 2
        return x + sign * eps * score + (noise_factor * eps) ** 0.5 * noise
    return step


def test_langevin_checker_accepts_the_reference_and_an_equivalent_form(capsys):
    import math

    from course import sde
    from course.exercises import check_langevin_step

    def from_the_ratio(x, score, noise, snr, alpha):
        """eps solved from ||eps score|| / ||sqrt(2 eps) z|| = snr sqrt(alpha), with the batch-mean norms."""
        z = noise.flatten(1).norm(dim=1).mean().item()
        s = score.flatten(1).norm(dim=1).mean().item()
        eps = 2 * (snr * math.sqrt(alpha) * z / s) ** 2
        return x + eps * score + math.sqrt(2 * eps) * noise

    check_langevin_step(_langevin())
    check_langevin_step(from_the_ratio)
    check_langevin_step(sde.langevin_step)
    assert capsys.readouterr().out.count("langevin_step: all 7 cases pass") == 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(invert=True), "upside down"),
    (dict(factor=1.0), "half the right size"),
    (dict(noise_factor=1.0), r"sqrt\(2 eps\) z, not sqrt\(eps\) z"),
    (dict(use_alpha=False), "alpha is missing"),
    (dict(norm="per_sample"), "one eps for the whole batch"),
    (dict(norm="whole"), "one norm of the whole batch"),
    (dict(norm="squares"), "averaged the squared norms"),
    (dict(sign=-1.0), r"\+ eps score"),
])
def test_langevin_checker_names_the_usual_mistakes(kwargs, message):
    from course.exercises import check_langevin_step

    with pytest.raises(ExerciseFailed, match=message):
        check_langevin_step(_langevin(**kwargs))


# notebook 06's exercise 3: CFG from one batched call

def _cfg_epsilon(second_labels="null", lam=False, calls="one", repeat_t=True, return_output=False):
    def cfg(unet, x_t, t, labels, w):
        null = torch.full_like(labels, 10)
        other = {"null": null, "labels": labels}[second_labels]
        if calls == "two":
            eps_c = unet(x_t, t, class_labels=labels).sample
            eps_u = unet(x_t, t, class_labels=other).sample
        else:
            out = unet(torch.cat([x_t, x_t]), torch.cat([t, t]) if repeat_t else t,
                       class_labels=torch.cat([labels, other]))
            if return_output:
                return out
            eps_c, eps_u = out.sample.chunk(2)
        return eps_u + w * (eps_c - eps_u) if lam else (1 + w) * eps_c - w * eps_u
    return cfg


def test_cfg_epsilon_checker_accepts_the_answer_the_package_and_the_lambda_form(capsys):
    from course import guidance
    from course.exercises import check_cfg_epsilon

    check_cfg_epsilon(_cfg_epsilon())
    check_cfg_epsilon(lambda unet, x_t, t, labels, w: guidance.cfg_eps_model(unet, labels, w)(x_t, t))
    check_cfg_epsilon(lambda unet, x_t, t, labels, w: guidance.cfg_combine_lambda(
        *guidance.cfg_predictions(unet, x_t, t, labels), 1 + w))
    assert capsys.readouterr().out.count("cfg_epsilon: all 6 cases pass") == 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(calls="two"), r"called 2 time\(s\) with batch sizes"),
    (dict(second_labels="labels"), "the second half got the real labels instead of NULL"),
    (dict(lam=True), "lambda form with lambda = w"),
    (dict(repeat_t=False), "one timestep and one label per sample"),
    (dict(return_output=True), r"its prediction is its .sample"),
])
def test_cfg_epsilon_checker_names_the_usual_mistakes(kwargs, message):
    from course.exercises import check_cfg_epsilon

    with pytest.raises(ExerciseFailed, match=message):
        check_cfg_epsilon(_cfg_epsilon(**kwargs))


def test_cfg_epsilon_checker_catches_swapped_halves():
    from course.exercises import check_cfg_epsilon

    def swapped(unet, x_t, t, labels, w):
        eps_u, eps_c = unet(torch.cat([x_t, x_t]), torch.cat([t, t]),
                            class_labels=torch.cat([labels, torch.full_like(labels, 10)])).sample.chunk(2)
        return (1 + w) * eps_c - w * eps_u  # reads the conditional half as the unconditional one

    with pytest.raises(ExerciseFailed, match="the halves are swapped"):
        check_cfg_epsilon(swapped)


# notebook 07's exercise 1, written from diffusers' AttnProcessor2_0: mistakes of reading the source

def _psa_from_source(merge_back=True, use_to_v=True, residual_before_rescale=True, split_heads=True):
    def psa(attn, hidden_states):
        residual = hidden_states
        batch, channel, height, width = hidden_states.shape
        h = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            h = attn.group_norm(h.transpose(1, 2)).transpose(1, 2)
        value = attn.to_v(h) if use_to_v else h
        if split_heads:
            head_dim = value.shape[-1] // attn.heads
            value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # A = I: each head's output is V
            value = (value.transpose(1, 2) if merge_back else value).reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](value)).transpose(-1, -2).reshape(batch, channel, height, width)
        if residual_before_rescale:
            return (out + residual if attn.residual_connection else out) / attn.rescale_output_factor
        out = out / attn.rescale_output_factor
        return out + residual if attn.residual_connection else out
    return psa


def test_psa_from_the_source_passes_with_or_without_the_head_split(capsys):
    from course.exercises import check_perturbed_self_attention

    check_perturbed_self_attention(_psa_from_source())
    check_perturbed_self_attention(_psa_from_source(split_heads=False))
    assert capsys.readouterr().out.count("perturbed_self_attention: all 4 cases pass") == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(merge_back=False), "merged without transposing back"),
    (dict(use_to_v=False), "not the tokens themselves"),
    (dict(residual_before_rescale=False), "add the residual first"),
])
def test_psa_from_the_source_mistakes_are_named(kwargs, message):
    from course.exercises import check_perturbed_self_attention

    with pytest.raises(ExerciseFailed, match=message):
        check_perturbed_self_attention(_psa_from_source(**kwargs))
