import pytest
import torch
from diffusers import DDPMScheduler

from course import forward
from course.device import get_device
from course.schedules import NoiseSchedule, cosine_schedule, get_schedule, linear_schedule


def test_linear_schedule_is_ddpm():
    s = linear_schedule()
    assert s.T == 1000
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    assert s.alpha_bar[-1] < 1e-4  # x_T is nearly pure noise
    assert torch.allclose(s.snr, s.alpha_bar / (1 - s.alpha_bar))
    assert s.alpha_bar_prev[0] == 1 and torch.equal(s.alpha_bar_prev[1:], s.alpha_bar[:-1])


@pytest.mark.parametrize("name, diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_schedules_match_diffusers(name, diffusers_name):
    ours, theirs = get_schedule(name), DDPMScheduler(beta_schedule=diffusers_name)
    assert torch.equal(ours.betas.float(), theirs.betas)
    assert torch.allclose(ours.alpha_bar, theirs.alphas_cumprod.double(), rtol=1e-5)


def test_cosine_alpha_bar_is_monotone_and_ends_near_zero():
    ab = cosine_schedule().alpha_bar
    assert (ab[1:] < ab[:-1]).all() and ab[-1] < 1e-6


def _diffusers64(**kwargs):
    """diffusers' scheduler with alphas_cumprod in float64, so both sides compute at the same precision."""
    scheduler = DDPMScheduler(clip_sample=False, **kwargs)
    scheduler.alphas_cumprod = torch.cumprod(1 - scheduler.betas.double(), 0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def test_q_sample_agrees_with_diffusers_add_noise():
    s = linear_schedule()
    x_0 = torch.randn(32, 3, 16, 16, dtype=torch.float64)
    eps, t = torch.randn_like(x_0), torch.randint(0, 1000, (32,))
    assert torch.allclose(forward.q_sample(s, x_0, t, eps), _diffusers64().add_noise(x_0, eps, t), rtol=0, atol=1e-6)
    # In float32, diffusers' float32 cumprod costs it about 1e-6.
    ours32 = forward.q_sample(s, x_0.float(), t, eps.float())
    assert torch.allclose(ours32, DDPMScheduler().add_noise(x_0.float(), eps.float(), t), atol=1e-5)


@pytest.mark.parametrize("t", [0, 1, 10, 500, 999])
def test_posterior_mean_and_variance_agree_with_diffusers(t):
    s = linear_schedule()
    scheduler = _diffusers64(prediction_type="sample")
    x_0, x_t = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randn(4, 1, 8, 8, dtype=torch.float64)
    mean, var = forward.q_posterior(s, x_0, x_t, t)
    seed = 7
    prev = scheduler.step(x_0, t, x_t, generator=torch.Generator().manual_seed(seed)).prev_sample
    theirs_var = scheduler._get_variance(t) if t > 0 else torch.tensor(0.0, dtype=torch.float64)
    z = torch.randn(x_0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    theirs_mean = prev - (theirs_var ** 0.5 * z if t > 0 else 0)
    assert torch.allclose(mean, theirs_mean, rtol=0, atol=1e-6)
    assert torch.allclose(var.flatten(), theirs_var.expand(4), rtol=1e-6, atol=1e-12)


def test_posterior_at_t0_is_the_data():
    s = linear_schedule()
    x_0, x_t = torch.randn(3, 2), torch.randn(3, 2)
    mean, var = forward.q_posterior(s, x_0, x_t, 0)
    assert torch.allclose(mean, x_0) and torch.all(var == 0)


def test_chain_of_one_step_kernels_matches_closed_form():
    s = linear_schedule()
    x = torch.full((20000, 1), 1.5, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for t in range(300):
        x = forward.q_step(s, x, t, generator=gen)
    assert x.mean().item() == pytest.approx(1.5 * s.alpha_bar[299].sqrt().item(), abs=0.02)
    assert x.std().item() == pytest.approx((1 - s.alpha_bar[299]).sqrt().item(), abs=0.02)


def test_predict_x0_inverts_q_sample():
    s = linear_schedule()
    x_0 = torch.randn(5, 2, dtype=torch.float64)
    eps, t = torch.randn_like(x_0), torch.tensor([0, 10, 100, 500, 999])
    assert torch.allclose(forward.predict_x0_from_eps(s, forward.q_sample(s, x_0, t, eps), t, eps), x_0)


@pytest.mark.parametrize("call, message", [
    (lambda s: forward.q_sample(s, torch.randn(4, 2), 1000, torch.randn(4, 2)), r"t must lie in \[0, 1000\)"),
    (lambda s: forward.q_sample(s, torch.randn(4, 2), -1, torch.randn(4, 2)), r"t must lie in \[0, 1000\)"),
    (lambda s: forward.q_sample(s, torch.randn(4, 2), 5, torch.randn(4, 3)), "x_0 and eps must have the same shape"),
    (lambda s: forward.q_sample(s, torch.ones(4, 2, dtype=torch.long), 5, torch.randn(4, 2)), "x_0 must be a floating"),
    (lambda s: forward.q_sample(s, torch.randn(4, 2), torch.tensor([1, 2]), torch.randn(4, 2)), "t has 2 timesteps"),
    (lambda s: forward.q_sample(s, torch.randn(4, 2), 2.5, torch.randn(4, 2)), "integer timesteps"),
    (lambda s: forward.q_posterior(s, torch.randn(4, 2), torch.randn(3, 2), 5), "x_0 and x_t must have the same shape"),
    (lambda s: NoiseSchedule("bad", torch.tensor([0.1, 1.5])), "beta_t must lie in"),
    (lambda s: get_schedule("quadratic"), "schedule name must be one of"),
    (lambda s: linear_schedule(T=0), "T must be a positive int"),
])
def test_bad_input_gives_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(linear_schedule())


def test_device_defaults_to_cpu_and_rejects_unknown(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    assert get_device().type == "cpu"
    assert get_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="device must be one of"):
        get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            get_device("cuda")


def test_binomial_diffusion_keep_probability():
    bits = torch.randint(0, 2, (20000,))
    betas = torch.full((10,), 0.1, dtype=torch.float64)
    gen, chain = torch.Generator().manual_seed(0), bits.clone()
    for t in range(10):
        chain = forward.binomial_q_step(chain, 0.1, generator=gen)
    expected = forward.binomial_keep_probability(betas)[-1].item()
    assert (chain == bits).float().mean().item() == pytest.approx(expected, abs=0.015)
    with pytest.raises(ValueError, match="only 0s and 1s"):
        forward.binomial_q_step(torch.tensor([0, 2]), 0.1)


def test_reverse_kernel_is_nearly_gaussian_only_for_small_beta():
    grid = torch.linspace(-4, 4, 2001, dtype=torch.float64)
    prior = lambda x: torch.exp(-0.5 * ((x - 1) / 0.4) ** 2) + torch.exp(-0.5 * ((x + 1) / 0.4) ** 2)

    def tv_to_gaussian(beta):
        d = forward.reverse_kernel_on_grid(prior, 0.0, beta, grid)
        m = torch.trapezoid(grid * d, grid)
        v = torch.trapezoid((grid - m) ** 2 * d, grid)
        g = torch.exp(-0.5 * (grid - m) ** 2 / v) / torch.sqrt(2 * torch.pi * v)
        return 0.5 * torch.trapezoid((d - g).abs(), grid).item()

    assert tv_to_gaussian(0.01) < 0.03 < 0.15 < tv_to_gaussian(0.5)
