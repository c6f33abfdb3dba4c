"""Flow matching (notebook 12): the path and its velocity, the CFM loss, the conversions, the DDPM model's velocity
field against DDIM, Euler against diffusers' FlowMatchEulerDiscreteScheduler, reflow and straightness."""
import numpy as np
import pytest
import torch

from course import datasets, ddim, flow, metrics, models, train
from course.schedules import get_schedule


def test_linear_path_ends_and_velocity():
    gen = torch.Generator().manual_seed(0)
    x_0, eps = torch.randn(5, 2, generator=gen), torch.randn(5, 2, generator=gen)
    assert torch.equal(flow.linear_path(x_0, eps, 0.0), x_0)
    assert torch.equal(flow.linear_path(x_0, eps, 1.0), eps)
    s = torch.rand(5, generator=gen)
    h = 1e-3  # the path's derivative in s is the conditional velocity, at every s
    numeric = (flow.linear_path(x_0, eps, s + h) - flow.linear_path(x_0, eps, s - h)) / (2 * h)
    torch.testing.assert_close(numeric, flow.conditional_velocity(x_0, eps), atol=1e-3, rtol=1e-3)


def test_cfm_loss_is_zero_for_the_conditional_velocity_and_rejects_bad_s():
    gen = torch.Generator().manual_seed(1)
    x_0, eps = torch.randn(8, 2, generator=gen), torch.randn(8, 2, generator=gen)
    s = torch.rand(8, generator=gen)
    oracle = lambda x_s, s_: flow.velocity_from_x0(x_s, x_0, s_[:, None])  # noqa: E731 (knows x_0)
    assert flow.cfm_loss(oracle, x_0, s, eps).item() < 1e-10
    assert flow.cfm_loss(lambda x, s_: torch.zeros_like(x), x_0, s, eps).item() == pytest.approx(
        ((eps - x_0) ** 2).mean().item())
    with pytest.raises(ValueError, match="one time per sample"):
        flow.cfm_loss(oracle, x_0, s[:3], eps)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flow.cfm_loss(oracle, x_0, s + 2, eps)


def test_conversions_round_trip():
    gen = torch.Generator().manual_seed(2)
    x_0, eps = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    for s in (0.1, 0.5, 0.9):
        x_s, v = flow.linear_path(x_0, eps, s), eps - x_0
        torch.testing.assert_close(flow.x0_from_velocity(x_s, v, s), x_0)
        torch.testing.assert_close(flow.eps_from_velocity(x_s, v, s), eps)
        torch.testing.assert_close(flow.velocity_from_eps(x_s, eps, s), v, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(flow.velocity_from_x0(x_s, x_0, s), v, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(flow.score_from_velocity(x_s, v, s), -eps / s, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        flow.velocity_from_eps(x_0, eps, 1.0)


def test_vp_to_linear_keeps_the_snr():
    schedule = get_schedule("linear")
    for t in (0, 500, 999):
        alpha_bar = float(schedule.alpha_bar[t])
        c, s = flow.vp_to_linear(alpha_bar)
        assert c * alpha_bar ** 0.5 == pytest.approx(1 - s)
        assert c * (1 - alpha_bar) ** 0.5 == pytest.approx(s)
        assert flow.alpha_bar_of_flow_time(s) == pytest.approx(alpha_bar, rel=1e-9)


@pytest.mark.parametrize("steps", [1, 4, 20])
def test_euler_on_the_ddpm_velocity_is_ddim_on_the_toy(steps):
    schedule, toy = get_schedule("linear"), models.load_toy("gaussian_mixture")
    x_T = torch.randn(300, 2, generator=torch.Generator().manual_seed(steps))
    x_ddim, _ = ddim.ddim_sample(toy, schedule, (300, 2), steps=steps, x_T=x_T, progress=False)
    c = flow.vp_to_linear(schedule.alpha_bar[999])[0]
    x_flow, _ = flow.flow_sample(flow.ddpm_velocity(toy, schedule), (300, 2), x_1=c * x_T,
                                 grid=flow.flow_time_grid_for_ddim(schedule, steps))
    torch.testing.assert_close(x_flow, x_ddim, atol=2e-4, rtol=1e-4)
    # Euler on a uniform grid in flow time is a different sampler, not DDIM
    x_uniform, _ = flow.flow_sample(flow.ddpm_velocity(toy, schedule), (300, 2), x_1=c * x_T,
                                    grid=np.linspace(0.99, 0.0, steps + 1).tolist())
    assert (x_uniform - x_ddim).abs().max() > 1e-2


def test_euler_on_the_ddpm_velocity_is_ddim_on_the_digits_unet():
    schedule, unet = get_schedule("linear"), models.load_digits_unet()
    y = torch.arange(4)
    eps_model = lambda x, t: unet(x, t, class_labels=y).sample  # noqa: E731
    x_T = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    x_ddim, _ = ddim.ddim_sample(eps_model, schedule, x_T.shape, steps=3, x_T=x_T, progress=False)
    c = flow.vp_to_linear(schedule.alpha_bar[999])[0]
    x_flow, _ = flow.flow_sample(flow.ddpm_velocity(eps_model, schedule), x_T.shape, x_1=c * x_T,
                                 grid=flow.flow_time_grid_for_ddim(schedule, 3))
    torch.testing.assert_close(x_flow, x_ddim, atol=1e-4, rtol=1e-4)


def test_euler_step_matches_diffusers_flow_match_euler():
    gen = torch.Generator().manual_seed(3)
    v_model = lambda x, s: torch.sin(3 * x) * (1 + s)  # noqa: E731 (any velocity field)
    for steps, shift in ((1, 1.0), (7, 1.0), (10, 3.0)):
        grid = [float(flow.shift_time(s, shift)) for s in flow.flow_time_grid(steps)]
        scheduler = flow.diffusers_scheduler(steps, shift=shift, grid=flow.flow_time_grid(steps))
        np.testing.assert_allclose(scheduler.sigmas.numpy(), grid, atol=1e-6)
        np.testing.assert_allclose(scheduler.timesteps.numpy(), 1000 * np.array(grid[:-1]), atol=1e-3)
        x = torch.randn(4, 2, generator=gen)
        ours = theirs = x
        for i, t in enumerate(scheduler.timesteps):
            ours = flow.euler_step(v_model(ours, grid[i]), ours, grid[i], grid[i + 1])
            theirs = scheduler.step(v_model(theirs, grid[i]), t, theirs).prev_sample
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_heun_is_exact_for_a_linear_velocity_and_costs_two_evaluations():
    v_model = lambda x, s: -2 * s * torch.ones_like(x)  # noqa: E731  dx/ds = -2s: x(0) = x(1) + 1
    x_1 = torch.zeros(3, 2)
    x, info = flow.flow_sample(v_model, (3, 2), steps=2, method="heun", x_1=x_1)
    torch.testing.assert_close(x, torch.ones(3, 2))
    assert info["nfe"] == 4
    x, info = flow.flow_sample(v_model, (3, 2), steps=2, method="euler", x_1=x_1)
    assert info["nfe"] == 2 and not torch.allclose(x, torch.ones(3, 2))
    with pytest.raises(ValueError, match="method"):
        flow.flow_sample(v_model, (3, 2), method="rk4")


def test_straightness_zero_for_straight_paths():
    gen = torch.Generator().manual_seed(4)
    x_0, eps = torch.randn(10, 2, generator=gen), torch.randn(10, 2, generator=gen)
    straight = [(s, flow.linear_path(x_0, eps, s)) for s in flow.flow_time_grid(8)]
    assert flow.straightness(straight) < 1e-6
    bent = [(s, x + s * (1 - s)) for s, x in straight]
    assert flow.straightness(bent) > 0.1
    with pytest.raises(ValueError):
        flow.straightness(straight[:1])


def test_flow_toy_learns_and_reflow_straightens():
    mixture = datasets.GaussianMixture2D()
    data, _ = mixture.sample(4000, seed=0)
    reference, _ = mixture.sample(1000, seed=1)
    torch.manual_seed(0)
    model = models.TimeMLP(hidden=64)
    history = train.fit_flow_toy(model, data, 600, batch_size=256, lr=3e-3)
    assert np.mean(history[-50:]) < np.mean(history[:10])
    velocity = flow.mlp_velocity(model)
    x, info = flow.flow_sample(velocity, (500, 2), 16, "euler", seed=2, keep_path=True)
    assert metrics.energy_distance(x, reference) < 0.05  # N(0, I) itself scores about 0.38
    x_0, eps = flow.reflow_pairs(velocity, 2000, steps=16, seed=5)
    rectified = models.TimeMLP(hidden=64)
    rectified.load_state_dict(model.state_dict())
    train.fit_flow_toy(rectified, x_0, 200, batch_size=256, lr=1e-3, noise=eps)
    _, info_after = flow.flow_sample(flow.mlp_velocity(rectified), (500, 2), 16, "euler", seed=2, keep_path=True)
    assert flow.straightness(info_after["path"]) < 0.5 * flow.straightness(info["path"])


# --------------------------------------------------------------------------- the checkers of notebook 12

def _cfm(path="right", target="right", time="s", reduce="mean"):
    """A student's cfm_loss with one of the usual mistakes."""
    def cfm_loss(velocity_model, x_0, s, eps):
        b = s.reshape(-1, *[1] * (x_0.dim() - 1))
        x_s = (1 - b) * x_0 + b * eps if path == "right" else b * x_0 + (1 - b) * eps
        goal = {"right": eps - x_0, "flipped": x_0 - eps, "eps": eps, "x_0": x_0}[target]
        error = (velocity_model(x_s, s if time == "s" else 1 - s) - goal) ** 2
        return error.mean() if reduce == "mean" else error.sum()
    return cfm_loss


def test_cfm_checker_accepts_the_answer_variants_and_the_package(capsys):
    from course.exercises import check_cfm_loss

    def with_mse(velocity_model, x_0, s, eps):
        s_ = s.view(-1, *([1] * (x_0.dim() - 1)))
        return torch.nn.functional.mse_loss(velocity_model(x_0 + s_ * (eps - x_0), s), eps - x_0)

    check_cfm_loss(_cfm())
    check_cfm_loss(with_mse)
    check_cfm_loss(flow.cfm_loss)
    assert capsys.readouterr().out.count("cfm_loss: all 5 cases pass") == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "flipped"}, "wrong sign"),
    ({"path": "reversed", "target": "flipped"}, "the path is reversed"),
    ({"path": "reversed"}, "swapped the weights"),
    ({"target": "eps"}, "L_simple"),
    ({"target": "x_0"}, "not x_0"),
    ({"time": "1 - s"}, "not 1 - s"),
    ({"reduce": "sum"}, "not the sum"),
])
def test_cfm_checker_names_the_usual_mistakes(kwargs, message):
    from course.exercises import ExerciseFailed, check_cfm_loss
    with pytest.raises(ExerciseFailed, match=message):
        check_cfm_loss(_cfm(**kwargs))


def test_cfm_checker_catches_a_detached_loss_and_a_model_never_called():
    from course.exercises import ExerciseFailed, check_cfm_loss
    with pytest.raises(ExerciseFailed, match="no gradient"):
        check_cfm_loss(lambda m, x_0, s, eps: _cfm()(m, x_0, s, eps).detach())
    with pytest.raises(ExerciseFailed, match="never called"):
        check_cfm_loss(lambda m, x_0, s, eps: ((eps - x_0) ** 2).mean())


def test_velocity_checker_accepts_equivalent_forms(capsys):
    from course.exercises import check_velocity_from_eps
    check_velocity_from_eps(lambda x_s, eps, s: (eps - x_s) / (1 - s))
    check_velocity_from_eps(lambda x_s, eps, s: eps - (x_s - s * eps) / (1 - s))
    check_velocity_from_eps(flow.velocity_from_eps)
    assert capsys.readouterr().out.count("velocity_from_eps: all 13 cases pass") == 3


@pytest.mark.parametrize("wrong, message", [
    (lambda x_s, eps, s: (x_s - eps) / (1 - s), "sign is flipped"),
    (lambda x_s, eps, s: eps - x_s, "divide by 1 - s"),
    (lambda x_s, eps, s: (eps - x_s) / s, "not s"),
    (lambda x_s, eps, s: eps - (x_s - s * eps), "division by 1 - s is missing"),
    (lambda x_s, eps, s: eps - (x_s - (1 - s) * eps) / s, "weight of eps is s"),  # the same as / s
    (lambda x_s, eps, s: ((eps - x_s) / (1 - s)).float(), "dtype"),
])
def test_velocity_checker_names_the_usual_mistakes(wrong, message):
    from course.exercises import ExerciseFailed, check_velocity_from_eps
    with pytest.raises(ExerciseFailed, match=message):
        check_velocity_from_eps(wrong)
