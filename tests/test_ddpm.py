"""The DDPM loss module and notebook 03's checkers: right answers pass, each kind of wrong answer fails."""
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from course import datasets, ddpm, models
from course.exercises import ExerciseFailed, check_ddpm_step, check_l_simple
from course.schedules import linear_schedule


def test_gaussian_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=gen, dtype=torch.float64), torch.randn(50, generator=gen, dtype=torch.float64)
    v1, v2 = torch.rand(50, generator=gen, dtype=torch.float64) + 0.1, torch.rand(50, generator=gen, dtype=torch.float64) + 0.1
    expected = kl_divergence(Normal(m1, v1.sqrt()), Normal(m2, v2.sqrt()))
    assert torch.allclose(ddpm.gaussian_kl(m1, v1, m2, v2), expected, atol=1e-12)
    with pytest.raises(ValueError, match="variances must be positive"):
        ddpm.gaussian_kl(m1, torch.zeros(50, dtype=torch.float64), m2, v2)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
@pytest.mark.parametrize("t", [1, 20, 500, 999])
def test_kl_term_equals_weighted_eps_error(variance, t):
    """With matching variances the KL is lambda_t ||eps - eps_theta||^2 (eq. 12); with beta, plus a constant."""
    schedule, gen = linear_schedule(), torch.Generator().manual_seed(t)
    x_0, eps = torch.randn(8, 2, generator=gen, dtype=torch.float64), torch.randn(8, 2, generator=gen, dtype=torch.float64)
    offset = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    model = lambda x_t, t_: eps + offset  # noqa: E731 - an eps_theta that is wrong by a known amount
    kl = ddpm.kl_term(model, schedule, x_0, t, eps, variance)
    weighted = ddpm.vlb_weights(schedule, variance)[t] * (offset ** 2).sum(1)
    sigma2, beta_tilde = ddpm.reverse_variance(schedule, variance)[t], ddpm.reverse_variance(schedule)[t]
    constant = 0.5 * (torch.log(sigma2 / beta_tilde) + beta_tilde / sigma2 - 1) * 2  # two dimensions
    assert torch.allclose(kl, weighted + constant, rtol=1e-9, atol=1e-12)


def test_weights_are_large_at_small_t_and_nan_at_zero():
    weights = ddpm.vlb_weights(linear_schedule())
    assert torch.isnan(weights[0]) and weights[1] > 100 * weights[500] > 0
    with pytest.raises(ValueError, match="variance must be one of"):
        ddpm.vlb_weights(linear_schedule(), "fixed")


def test_prior_term_is_tiny_and_needs_no_model():
    x_0 = datasets.digits("test")[0][:16]
    assert (ddpm.prior_term(linear_schedule(), x_0) / x_0[0].numel() < 2e-5).all()  # nats per pixel
    assert (ddpm.prior_term(linear_schedule(T=50), x_0) > 1).all()  # too few steps: x_T is not N(0, I)


def test_variational_bound_is_tight_for_gaussian_data_with_the_exact_eps():
    """For x_0 ~ N(0, I) the true reverse kernel is Gaussian with variance beta_t: the bound equals the entropy."""
    schedule = linear_schedule()
    x_0 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def exact_eps(x_t, t):
        return (1 - schedule.alpha_bar[t].reshape(-1, 1)).sqrt() * x_t

    entropy = -Normal(0.0, 1.0).log_prob(x_0).sum(1).mean()
    tight = ddpm.variational_bound(exact_eps, schedule, x_0, variance="beta")["total"].mean()
    loose = ddpm.variational_bound(exact_eps, schedule, x_0, variance="beta_tilde")["total"].mean()
    assert abs(tight - entropy) < 0.03 and loose > entropy + 0.5


def test_variational_bounds_share_the_model_calls_and_equal_separate_bounds():
    schedule, x_0 = linear_schedule(), torch.randn(20, 2, generator=torch.Generator().manual_seed(3))
    model, calls = models.TimeMLP(), []

    def counted(x_t, t):
        calls.append(int(t[0]))
        return model(x_t, t)
    both = ddpm.variational_bounds(counted, schedule, x_0, seed=1)
    assert sorted(calls) == list(range(schedule.T))
    for variance in ("beta_tilde", "beta"):
        alone = ddpm.variational_bound(model, schedule, x_0, seed=1, variance=variance)
        assert torch.allclose(both[variance]["total"], alone["total"])


def test_variational_bound_of_the_shipped_gaussian_mixture_model_is_above_the_entropy():
    mixture, model = datasets.GaussianMixture2D(), models.load_toy("gaussian_mixture")
    x_0, _ = mixture.sample(500, seed=3)
    bound = ddpm.variational_bound(model, linear_schedule(), x_0, seed=0)
    assert bound["kl"].shape == (999, 500)
    assert bound["total"].mean() > -mixture.log_prob(x_0).mean()
    untrained = ddpm.variational_bound(models.TimeMLP(), linear_schedule(), x_0[:100], seed=0)
    assert untrained["total"].mean() > bound["total"].mean() + 1


def test_l_simple_validates_t():
    with pytest.raises(ValueError, match=r"must lie in \[0, 1000\)"):
        ddpm.l_simple(lambda x, t: x, linear_schedule(), torch.zeros(2, 2), torch.tensor([0, 1000]), torch.zeros(2, 2))


# --------------------------------------------------------------------------- the L_simple checker

def _x_t(x_0, t, eps, alpha_bar):
    a = alpha_bar[t].reshape(-1, *[1] * (x_0.dim() - 1)).to(x_0.dtype)
    return a.sqrt() * x_0 + (1 - a).sqrt() * eps


def l_simple_right(eps_model, x_0, t, eps, alpha_bar):
    return F.mse_loss(eps_model(_x_t(x_0, t, eps, alpha_bar), t), eps)


def _no_sqrt(eps_model, x_0, t, eps, alpha_bar):
    a = alpha_bar[t].reshape(-1, *[1] * (x_0.dim() - 1)).float()
    return F.mse_loss(eps_model(a * x_0 + (1 - a) * eps, t), eps)


def _predicts_x0(eps_model, x_0, t, eps, alpha_bar):
    return F.mse_loss(eps_model(_x_t(x_0, t, eps, alpha_bar), t), x_0)


def _sum_not_mean(eps_model, x_0, t, eps, alpha_bar):
    return ((eps_model(_x_t(x_0, t, eps, alpha_bar), t) - eps) ** 2).sum()


def _per_sample(eps_model, x_0, t, eps, alpha_bar):
    return ((eps_model(_x_t(x_0, t, eps, alpha_bar), t) - eps) ** 2).flatten(1).mean(1)


def _python_float(eps_model, x_0, t, eps, alpha_bar):
    return l_simple_right(eps_model, x_0, t, eps, alpha_bar).item()


def _detached(eps_model, x_0, t, eps, alpha_bar):
    return l_simple_right(eps_model, x_0, t, eps, alpha_bar).detach()


def _shifted_t(eps_model, x_0, t, eps, alpha_bar):
    return F.mse_loss(eps_model(_x_t(x_0, t, eps, alpha_bar), (t + 1).clamp(max=999)), eps)


def _model_on_x0(eps_model, x_0, t, eps, alpha_bar):
    return F.mse_loss(eps_model(x_0, t), eps)


def test_l_simple_reference_passes(capsys):
    check_l_simple(l_simple_right)
    assert "l_simple: all" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (_no_sqrt, "loss is"),
    (_predicts_x0, "loss is"),
    (_sum_not_mean, "not a sum"),
    (_per_sample, "one number"),
    (_python_float, "torch.Tensor"),
    (_detached, "no gradient"),
    (_shifted_t, "loss is"),
    (_model_on_x0, "loss is"),
])
def test_l_simple_checker_rejects_wrong_answers(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_l_simple(wrong)


# --------------------------------------------------------------------------- the ancestral step checker

def ddpm_step_right(eps, x_t, t, noise, betas, variance="beta_tilde", noise_at_zero=False, no_sqrt=False):
    alphas = 1 - betas
    alpha_bar = torch.cumprod(alphas, 0)
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=betas.dtype), alpha_bar[:-1]])
    coef = betas[t] / ((1 - alpha_bar[t]) if no_sqrt else (1 - alpha_bar[t]).sqrt())
    mean = (x_t - coef.to(x_t.dtype) * eps) / alphas[t].sqrt().to(x_t.dtype)
    if t == 0 and not noise_at_zero:
        return mean
    var = betas[t] if variance == "beta" else (1 - alpha_bar_prev[t]) / (1 - alpha_bar[t]) * betas[t]
    return mean + var.sqrt().to(x_t.dtype) * noise


def test_ddpm_step_reference_passes(capsys):
    check_ddpm_step(ddpm_step_right)
    assert "ddpm_step: all" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda *a: ddpm_step_right(*a, variance="beta"), "sigma_t\\^2 = beta_t"),
    (lambda eps, x_t, t, noise, betas: ddpm_step_right(eps, x_t, t, noise, betas, noise_at_zero=True,
                                                        variance="beta" if t == 0 else "beta_tilde"), "add no noise"),
    (lambda *a: ddpm_step_right(*a, no_sqrt=True), "differs from the reference"),
    (lambda eps, x_t, t, noise, betas: ddpm_step_right(eps, x_t, t, -noise, betas), "differs"),
    (lambda eps, x_t, t, noise, betas: ddpm_step_right(eps, x_t, t, noise, betas).double(), "dtype"),
    (lambda eps, x_t, t, noise, betas: ddpm_step_right(eps, x_t, max(t - 1, 0), noise, betas), "differs"),
])
def test_ddpm_step_checker_rejects_wrong_answers(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_ddpm_step(wrong)


def test_checkers_report_not_implemented():
    def todo(*args):
        raise NotImplementedError()
    for checker in (check_l_simple, check_ddpm_step):
        with pytest.raises(ExerciseFailed, match="not implemented yet"):
            checker(todo)

