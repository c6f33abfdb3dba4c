"""DDIM (notebook 04): the step against diffusers, eta = 1 as DDPM, determinism, inversion, slerp, bad input."""
import pytest
import torch

from course import ddim, ddpm
from course.exercises import ExerciseFailed, check_ddim_step
from course.schedules import get_schedule

SCHEDULE = get_schedule("linear")


@pytest.mark.parametrize("spacing", ddim.SPACINGS)
@pytest.mark.parametrize("steps", [10, 20, 50, 100, 30])
def test_timesteps_match_diffusers(steps, spacing):
    assert ddim.ddim_timesteps(steps, 1000, spacing) == ddim.diffusers_scheduler(steps, spacing, SCHEDULE.alpha_bar).timesteps.tolist()


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_step_matches_diffusers_on_the_trailing_sub_sequence(eta):
    scheduler = ddim.diffusers_scheduler(20, "trailing", SCHEDULE.alpha_bar)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 16, 16, generator=gen)
    taus = scheduler.timesteps.tolist()
    for t, t_prev in zip(taus, taus[1:] + [-1]):
        eps, noise = torch.randn(x.shape, generator=gen), torch.randn(x.shape, generator=gen)
        theirs = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        ours = ddim.ddim_step(SCHEDULE, eps, x, t, t_prev, eta, noise=noise)
        assert (ours - theirs).abs().max() < 1e-5
        x = ours


def test_eta_one_with_every_timestep_is_the_ddpm_step():
    gen = torch.Generator().manual_seed(1)
    for t in (999, 500, 1):
        x, eps, noise = (torch.randn(4, 2, generator=gen, dtype=torch.float64) for _ in range(3))
        x_ddim = ddim.ddim_step(SCHEDULE, eps, x, t, t - 1, 1.0, noise=noise)
        assert torch.allclose(x_ddim, ddpm.ddpm_step(SCHEDULE, eps, x, t, noise=noise), atol=1e-12)


def test_eta_zero_is_deterministic_and_eta_one_is_not():
    model = lambda x, t: 0.1 * x  # noqa: E731
    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    a, _ = ddim.ddim_sample(model, SCHEDULE, (5, 2), steps=10, seed=1, x_T=x_T, progress=False)
    b, _ = ddim.ddim_sample(model, SCHEDULE, (5, 2), steps=10, seed=2, x_T=x_T, progress=False)
    c, _ = ddim.ddim_sample(model, SCHEDULE, (5, 2), steps=10, eta=1.0, seed=2, x_T=x_T, progress=False)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_inversion_of_an_exact_model_reconstructs():
    """For data at one point x_star, eps_theta(x_t, t) = (x_t - sqrt(alpha_bar) x_star) / sqrt(1 - alpha_bar) is exact."""
    x_star = torch.tensor([[0.5, -1.0]], dtype=torch.float64)

    def exact(x, t):
        alpha_bar = SCHEDULE.alpha_bar[t].reshape(-1, 1)
        return (x - alpha_bar.sqrt() * x_star) / (1 - alpha_bar).sqrt()

    x_T = ddim.ddim_invert(exact, SCHEDULE, x_star.clone(), steps=10, progress=False)
    back, _ = ddim.ddim_sample(exact, SCHEDULE, (1, 2), steps=10, x_T=x_T, progress=False)
    assert torch.allclose(back, x_star, atol=1e-8)


def test_slerp_keeps_the_norm_and_the_ends():
    gen = torch.Generator().manual_seed(0)
    z_0, z_1 = torch.randn(1, 1, 16, 16, generator=gen), torch.randn(1, 1, 16, 16, generator=gen)
    assert torch.allclose(ddim.slerp(z_0, z_1, 0.0), z_0, atol=1e-5)
    assert torch.allclose(ddim.slerp(z_0, z_1, 1.0), z_1, atol=1e-5)
    mid = ddim.slerp(z_0, z_1, 0.5)
    assert abs(mid.norm() / z_0.norm() - 1) < 0.1 < 1 - ((z_0 + z_1) / 2).norm() / z_0.norm()


@pytest.mark.parametrize("call, message", [
    (lambda: ddim.ddim_timesteps(0), "steps"),
    (lambda: ddim.ddim_timesteps(2000), "at most"),
    (lambda: ddim.ddim_timesteps(10, spacing="even"), "spacing"),
    (lambda: ddim.ddim_step(SCHEDULE, torch.zeros(2, 2), torch.zeros(2, 2), 10, 10), "t_prev"),
    (lambda: ddim.ddim_step(SCHEDULE, torch.zeros(2, 2), torch.zeros(2, 2), 1000, 10), "t"),
    (lambda: ddim.ddim_step(SCHEDULE, torch.zeros(2, 2), torch.zeros(2, 3), 10, 5), "shape"),
    (lambda: ddim.ddim_step(SCHEDULE, torch.zeros(2, 2), torch.zeros(2, 2), 10, 5, eta=-1), "eta"),
    (lambda: ddim.ddim_sample(lambda x, t: x, SCHEDULE, (2, 2), x_T=torch.zeros(3, 2)), "x_T"),
])
def test_bad_input_gives_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def ddim_step_right(eps, x_t, t, t_prev, eta, noise, alpha_bar, *, direction_without_sigma=False,
                    prev_zero_at_end=False, no_noise=False):
    alpha_bar_t = alpha_bar[t]
    alpha_bar_prev = alpha_bar[t_prev] if t_prev >= 0 else torch.ones((), dtype=alpha_bar.dtype)
    if prev_zero_at_end and t_prev < 0:
        alpha_bar_prev = alpha_bar[0]
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)).sqrt()
    x0 = (x_t - (1 - alpha_bar_t).sqrt().float() * eps) / alpha_bar_t.sqrt().float()
    direction = (1 - alpha_bar_prev - (0 if direction_without_sigma else sigma ** 2)).sqrt().float() * eps
    return alpha_bar_prev.sqrt().float() * x0 + direction + (0 if no_noise else sigma.float() * noise)


def test_ddim_checker_passes_the_reference(capsys):
    check_ddim_step(ddim_step_right)
    assert "ddim_step: all" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, hint", [
    ({"direction_without_sigma": True}, "sqrt(1 - alpha_bar_prev - sigma_t^2)"),
    ({"no_noise": True}, "add sigma_t * noise"),
    ({"prev_zero_at_end": True}, "alpha_bar_prev = 1"),
])
def test_ddim_checker_catches_wrong_answers_with_a_hint(mistake, hint):
    with pytest.raises(ExerciseFailed, match=r"(?s)" + hint.replace("(", r"\(").replace(")", r"\)")
                       .replace("*", r"\*").replace("^", r"\^")):
        check_ddim_step(lambda *args: ddim_step_right(*args, **mistake))


def test_ddim_checker_catches_a_ddpm_step():
    def ddpm_instead(eps, x_t, t, t_prev, eta, noise, alpha_bar):
        return ddim_step_right(eps, x_t, t, t - 1 if t > 0 else -1, 1.0, noise, alpha_bar)
    with pytest.raises(ExerciseFailed):
        check_ddim_step(ddpm_instead)
