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
