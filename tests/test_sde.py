"""course.sde: the VP SDE against DDPM's discrete chain and diffusers, the samplers, and the notebook 05 checkers."""
import math

import pytest
import torch

from course import datasets, ddim, ddpm, forward, metrics, models, sde
from course.exercises import ExerciseFailed, check_pf_ode_drift, check_reverse_em_step
from course.schedules import get_schedule

SCHEDULE = get_schedule("linear")
VP = sde.VPSDE.from_schedule(SCHEDULE)
MIXTURE = datasets.GaussianMixture2D()


@pytest.fixture(scope="module")
def toy():
    return models.load_toy("gaussian_mixture")


# --------------------------------------------------------------------------- the SDE and its time convention

def test_vp_sde_matches_the_discrete_schedule():
    assert VP.beta_min == pytest.approx(0.1) and VP.beta_max == pytest.approx(20.0)
    t = torch.arange(SCHEDULE.T)
    continuous = torch.tensor([VP.alpha_bar(VP.time(int(i))) for i in t], dtype=torch.float64)
    signal_rel = (continuous.sqrt() / SCHEDULE.alpha_bar.sqrt() - 1).abs()
    assert signal_rel.max() < 0.04  # exp(-sum beta) vs prod(1 - beta): worst at t = T-1, where sqrt(alpha_bar) ~ 0.006
    std_rel = ((1 - continuous).sqrt() / (1 - SCHEDULE.alpha_bar).sqrt() - 1).abs()
    assert std_rel[100:].max() < 4e-3 and std_rel.max() < 0.05  # the worst is t = 0, where the noise std is 0.01
    assert [VP.timestep(VP.time(i)) for i in (0, 1, 500, 999)] == [0, 1, 500, 999]
    assert VP.timestep(0.0) == 0 and VP.timestep(1.0) == 999
    assert sde.time_grid(SCHEDULE.T) == pytest.approx([VP.time(i) for i in range(999, -1, -1)])


def test_forward_sde_path_has_the_vp_marginal():
    x_0 = torch.full((4000, 2), 2.0, dtype=torch.float64)
    path = dict(sde.forward_sde_path(VP, x_0, steps=400, seed=0))
    for s in (0.25, 1.0):
        x = path[s]
        assert x.mean().item() == pytest.approx(2 * math.sqrt(VP.alpha_bar(s)), abs=0.05)
        assert x.std().item() == pytest.approx(VP.marginal_std(s), abs=0.03)


def test_ve_sde():
    ve = sde.VESDE(0.01, 50.0)
    assert ve.sigma(0) == pytest.approx(0.01) and ve.sigma(1) == pytest.approx(50.0)
    # g^2 = d sigma^2 / ds
    s, h = 0.4, 1e-6
    assert ve.diffusion(s) ** 2 == pytest.approx((ve.sigma(s + h) ** 2 - ve.sigma(s - h) ** 2) / (2 * h), rel=1e-5)
    x = torch.randn(2000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    end = sde.forward_sde_path(ve, x * 0, steps=200, seed=1)[-1][1]
    assert end.std().item() == pytest.approx(ve.marginal_std(1.0), rel=0.08)


# --------------------------------------------------------------------------- scores

def test_score_from_eps_is_the_gaussian_score():
    x_0 = torch.randn(8, 2, dtype=torch.float64)
    eps = torch.randn(8, 2, dtype=torch.float64)
    s = 0.3
    a = VP.alpha_bar(s)
    x_s = (math.sqrt(a) * x_0 + math.sqrt(1 - a) * eps).requires_grad_(True)
    log_q = -0.5 * ((x_s - math.sqrt(a) * x_0) ** 2).sum() / (1 - a)
    (grad,) = torch.autograd.grad(log_q, x_s)
    assert torch.allclose(sde.score_from_eps(eps, VP.marginal_std(s)), grad, atol=1e-10)


def test_mixture_score_is_the_gradient_of_log_prob():
    x = torch.randn(50, 2, dtype=torch.float64, requires_grad=True)
    a = VP.alpha_bar(0.2)
    (grad,) = torch.autograd.grad(MIXTURE.log_prob(x, a).sum(), x)
    assert torch.allclose(sde.mixture_score(MIXTURE, VP)(x.detach(), 0.2), grad, atol=1e-8)


def test_conditional_score_is_the_component_score():
    """grad log p_t(x) + grad log p_t(y = k | x) is the score of the noised component k (Bayes, eq. 14)."""
    x = torch.randn(40, 2, dtype=torch.float64) * 2
    s, k = 0.15, 2
    a = VP.alpha_bar(s)
    y = torch.full((40,), k)
    class_grad = lambda x, s: sde.log_prob_grad(
        lambda z: sde.mixture_class_log_prob(MIXTURE, z, VP.alpha_bar(s)), x, y)
    got = sde.conditional_score(sde.mixture_score(MIXTURE, VP), class_grad, scale=1.0)(x, s)
    mean = math.sqrt(a) * torch.tensor(MIXTURE.means[k], dtype=torch.float64)
    var = a * MIXTURE.std ** 2 + 1 - a
    assert torch.allclose(got, -(x - mean) / var, atol=1e-8)


def test_learned_score_is_close_to_the_exact_one(toy):
    x_0, _ = MIXTURE.sample(2000, seed=5)
    for s, most in ((0.1, 0.3), (0.5, 0.08)):  # the small MLP is worst at low noise (~22 % at s = 0.1)
        t = VP.timestep(s)
        x = forward.q_sample(SCHEDULE, x_0, t, torch.randn(x_0.shape, generator=torch.Generator().manual_seed(t)))
        learned = sde.eps_model_score(toy, VP)(x, s)
        exact = sde.mixture_score(MIXTURE, VP)(x, s)
        assert ((learned - exact).norm(dim=1).mean() / exact.norm(dim=1).mean()) < most


# --------------------------------------------------------------------------- steps against diffusers and DDPM

def test_em_step_matches_diffusers_score_sde_vp():
    from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler

    scheduler = ScoreSdeVpScheduler(beta_min=0.1, beta_max=20.0)
    scheduler.set_timesteps(100)
    vp = sde.VPSDE(0.1, 20.0)
    for s in scheduler.timesteps[[0, 50, 99]].tolist():
        x, eps = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.randn(3, 1, 8, 8, dtype=torch.float64)
        theirs, _ = scheduler.step_pred(eps, x, torch.tensor(s, dtype=torch.float64),
                                        generator=torch.Generator().manual_seed(0))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
        ours = sde.em_step(vp, x, s, 1 / 100, sde.score_from_eps(eps, vp.marginal_std(s)), noise)
        assert (ours - theirs).abs().max() < 1e-9


def test_langevin_step_matches_diffusers_step_correct():
    from diffusers import ScoreSdeVeScheduler

    scheduler = ScoreSdeVeScheduler(snr=0.16)
    scheduler.set_timesteps(10)
    x, score = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8) * 5
    theirs = scheduler.step_correct(score, x, generator=torch.Generator().manual_seed(0)).prev_sample
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert (sde.langevin_step(x, score, noise, snr=0.16) - theirs).abs().max() < 1e-5


def _one_step_gap(toy, t: int, h: int) -> float:
    """|EM step - DDPM ancestral step from t to t - h| relative to the size of the step, same noise."""
    gen = torch.Generator().manual_seed(t)
    x_0, _ = MIXTURE.sample(1000, seed=2)
    x_t = forward.q_sample(SCHEDULE, x_0, t, torch.randn(x_0.shape, generator=gen))
    noise = torch.randn(x_0.shape, generator=gen)
    with torch.no_grad():
        eps = toy(x_t, torch.full((1000,), t))
    x_ddpm = ddim.ddim_step(SCHEDULE, eps, x_t, t, t - h, eta=1.0, noise=noise)
    s = VP.time(t)
    em = sde.em_step(VP, x_t, s, h / VP.T, sde.score_from_eps(eps, VP.marginal_std(s)), noise)
    return ((em - x_ddpm).norm(dim=1).mean() / (x_ddpm - x_t).norm(dim=1).mean()).item()


def test_em_step_approaches_the_ddpm_step_as_steps_shrink(toy):
    gaps = [_one_step_gap(toy, 500, h) for h in (64, 16, 4, 1)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 3e-3
    # with h = 1 the DDPM step is the ancestral step of Algorithm 2 itself
    gen = torch.Generator().manual_seed(0)
    x_t, eps, noise = torch.randn(5, 2), torch.randn(5, 2), torch.randn(5, 2)
    assert torch.allclose(ddim.ddim_step(SCHEDULE, eps, x_t, 300, 299, 1.0, noise=noise),
                          ddpm.ddpm_step(SCHEDULE, eps, x_t, 300, noise=noise), atol=1e-5)
    del gen


def test_em_with_T_steps_follows_ddpm_sample(toy):
    """The same noises in the same order: 1000 EM steps land where Algorithm 2 does, for most samples."""
    x_ddpm, _ = ddpm.ddpm_sample(toy, SCHEDULE, (300, 2), seed=0, progress=False)
    em, info = sde.euler_maruyama_sample(sde.eps_model_score(toy, VP), VP, (300, 2), steps=1000, seed=0,
                                         progress=False)
    assert info["nfe"] == 1000
    assert (em - x_ddpm).norm(dim=1).median() < 0.05


# --------------------------------------------------------------------------- samplers on the exact mixture

@pytest.mark.parametrize("name", ["em", "euler", "heun", "pc", "ivp"])
def test_samplers_reach_the_mixture(name):
    score = sde.mixture_score(MIXTURE, VP)
    shape = (1000, 2)
    runs = {"em": lambda: sde.euler_maruyama_sample(score, VP, shape, 50, progress=False),
            "euler": lambda: sde.ode_sample(score, VP, shape, 20, "euler", progress=False),
            "heun": lambda: sde.ode_sample(score, VP, shape, 10, "heun", progress=False),
            "pc": lambda: sde.pc_sample(score, VP, shape, 30, progress=False),
            "ivp": lambda: sde.solve_ivp_sample(score, VP, shape, rtol=1e-3, atol=1e-3)}
    x, info = runs[name]()
    reference, _ = MIXTURE.sample(1000, seed=1)
    assert metrics.energy_distance(x, reference) < 0.015
    assert info["nfe"] > 0


def test_nfe_counts_and_determinism():
    score = sde.mixture_score(MIXTURE, VP)
    calls = []

    def counting(x, s):
        calls.append(s)
        return score(x, s)

    _, info = sde.ode_sample(counting, VP, (10, 2), 6, "heun", progress=False)
    assert info["nfe"] == len(calls) == 2 * 6 - 2
    calls.clear()
    _, info = sde.pc_sample(counting, VP, (10, 2), 6, corrector_steps=2, progress=False)
    assert info["nfe"] == len(calls) == 6 + 5 * 2
    x_T = torch.randn(10, 2)
    a, _ = sde.ode_sample(score, VP, (10, 2), 8, x_T=x_T, seed=1, progress=False)
    b, _ = sde.ode_sample(score, VP, (10, 2), 8, x_T=x_T, seed=2, progress=False)
    assert torch.equal(a, b)  # the ODE is deterministic given x_T
    _, info = sde.euler_maruyama_sample(score, VP, (10, 2), 5, keep_path=True, progress=False)
    assert [s for s, _ in info["path"]][0] == 1.0 and info["path"][-1][0] == 0.0 and len(info["path"]) == 6


# --------------------------------------------------------------------------- bad input

def test_bad_inputs():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="s must lie in"):
        VP.beta(1.5)
    with pytest.raises(ValueError, match="ds must be > 0"):
        sde.em_step(VP, x, 0.5, -0.1, x, x)
    with pytest.raises(ValueError, match="same shape"):
        sde.em_step(VP, x, 0.5, 0.1, torch.randn(4, 3), x)
    with pytest.raises(ValueError, match="method"):
        sde.ode_sample(lambda x, s: x, VP, (4, 2), 5, method="rk4")
    with pytest.raises(ValueError, match="x_T has shape"):
        sde.euler_maruyama_sample(lambda x, s: x, VP, (4, 2), 5, x_T=torch.randn(3, 2))
    with pytest.raises(ValueError, match="marginal_std"):
        sde.score_from_eps(x, 0.0)
    with pytest.raises(ValueError, match="beta_min"):
        sde.VPSDE(0.0, 20.0)
    with pytest.raises(ValueError, match="steps"):
        sde.time_grid(0)


# --------------------------------------------------------------------------- checkers

def em_right(x, score, beta, ds, noise):
    return x + (0.5 * beta * x + beta * score) * ds + math.sqrt(beta * ds) * noise


def drift_right(x, score, beta):
    return -0.5 * beta * x - 0.5 * beta * score


def test_checkers_pass_the_reference(capsys):
    check_reverse_em_step(em_right)
    check_pf_ode_drift(drift_right)
    out = capsys.readouterr().out
    assert "reverse_em_step: all" in out and "pf_ode_drift: all" in out


@pytest.mark.parametrize("wrong, hint", [
    (lambda x, sc, b, ds, z: x + (0.5 * b * x + b * sc) * ds, "no noise"),
    (lambda x, sc, b, ds, z: x + (0.5 * b * x + b * sc) * ds + b * ds * z, "sqrt(ds)"),
    (lambda x, sc, b, ds, z: x + (0.5 * b * x + b * sc) * ds + math.sqrt(b) * ds * z, "sqrt(ds)"),
    (lambda x, sc, b, ds, z: x + (0.5 * b * x + 0.5 * b * sc) * ds + math.sqrt(b * ds) * z, "probability-flow"),
    (lambda x, sc, b, ds, z: x + (-0.5 * b * x - b * sc) * ds + math.sqrt(b * ds) * z, "wrong sign"),
    (lambda x, sc, b, ds, z: x + (0.5 * b * x - b * sc) * ds + math.sqrt(b * ds) * z, "score term"),
    (lambda x, sc, b, ds, z: (x + (0.5 * b * x + b * sc) * ds + math.sqrt(b * ds) * z).double(), "dtype"),
    (lambda x, sc, b, ds, z: x[:1], "shape"),
    (lambda x, sc, b, ds, z: None, "torch.Tensor"),
])
def test_em_checker_rejects_wrong_answers(wrong, hint):
    with pytest.raises(ExerciseFailed, match=hint.replace("(", r"\(").replace(")", r"\)")):
        check_reverse_em_step(wrong)


def test_em_checker_reports_not_implemented():
    def todo(x, score, beta, ds, noise):
        raise NotImplementedError()
    with pytest.raises(ExerciseFailed, match="not implemented"):
        check_reverse_em_step(todo)


@pytest.mark.parametrize("wrong, hint", [
    (lambda x, sc, b: -0.5 * b * x - b * sc, "reverse SDE"),
    (lambda x, sc, b: -0.5 * b * sc, "missing"),
    (lambda x, sc, b: -0.5 * b * x + 0.5 * b * sc, "wrong sign"),
    (lambda x, sc, b: 0.5 * b * x + 0.5 * b * sc, "minus the drift"),
    (lambda x, sc, b: -b * x - b * sc, "twice"),
    (lambda x, sc, b: -0.5 * x - 0.5 * sc, "differs"),
])
def test_drift_checker_rejects_wrong_answers(wrong, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check_pf_ode_drift(wrong)


@pytest.mark.parametrize("sampler", ["em", "heun", "pc"])
def test_every_sampler_samples_the_ve_sde_too(sampler):
    """The VE SDE's samplers start from N(0, sigma_max^2 I), denoise by x + sigma^2 score, and reach the data."""
    mixture, ve = datasets.GaussianMixture2D(), sde.VESDE(sigma_min=0.01, sigma_max=50.0)
    score = sde.mixture_score(mixture, ve)
    run = {"em": lambda: sde.euler_maruyama_sample(score, ve, (1000, 2), steps=200, progress=False, keep_path=True),
           "heun": lambda: sde.ode_sample(score, ve, (1000, 2), steps=30, progress=False, keep_path=True),
           "pc": lambda: sde.pc_sample(score, ve, (1000, 2), steps=100, progress=False, keep_path=True)}[sampler]
    x, info = run()
    start = info["path"][0][1]
    assert 40 < start.std().item() < 60  # the prior N(0, 50^2 I), not N(0, I)
    data, _ = mixture.sample(1000, seed=1)
    assert metrics.energy_distance(x.float(), data) < 0.01


def test_ve_mixture_score_is_the_gradient_of_the_noised_density():
    mixture, ve = datasets.GaussianMixture2D(), sde.VESDE()
    x = torch.randn(20, 2, dtype=torch.float64) * 3
    for s in (0.05, 0.5, 1.0):
        var = ve.marginal_std(s) ** 2
        xg = x.clone().requires_grad_()
        log_comp, _, _ = mixture.responsibilities(xg, 1.0, var)
        torch.logsumexp(log_comp, dim=1).sum().backward()
        assert torch.allclose(xg.grad, sde.mixture_score(mixture, ve)(x, s), atol=1e-10)
