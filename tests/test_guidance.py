"""Guidance (notebook 06): the CFG forms agree, passes are batched, classifier guidance is the Bayes identity,
label dropout, the sampler for the FID harness, the widget, and the three checkers with wrong answers."""
import math

import pytest
import torch

from course import checkpoints, datasets, ddim, guidance, models, widgets
from course.exercises import ExerciseFailed, check_cfg_combine, check_classifier_guided_eps, check_drop_labels
from course.schedules import linear_schedule

SCHEDULE = linear_schedule()


@pytest.fixture(scope="module")
def unet():
    return models.load_digits_unet()


class CountingUNet(torch.nn.Module):
    """Wraps the UNet and records the batch size and the labels of every forward call."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.calls = unet, []

    def forward(self, x, t, class_labels=None):
        self.calls.append((len(x), class_labels.clone()))
        return self.unet(x, t, class_labels=class_labels)


# --------------------------------------------------------------------------- the CFG combination

def test_the_two_forms_agree_and_w_zero_is_the_conditional_model():
    gen = torch.Generator().manual_seed(0)
    eps_c, eps_u = torch.randn(5, 1, 16, 16, generator=gen), torch.randn(5, 1, 16, 16, generator=gen)
    for w in (0.0, 0.5, 3.0, 8.0):
        assert torch.allclose(guidance.cfg_combine(eps_c, eps_u, w), guidance.cfg_combine_lambda(eps_c, eps_u, 1 + w),
                              atol=1e-6)
    assert torch.equal(guidance.cfg_combine(eps_c, eps_u, 0.0), eps_c)
    assert torch.allclose(guidance.cfg_combine_lambda(eps_c, eps_u, 0.0), eps_u)
    per_sample = guidance.cfg_combine(eps_c, eps_u, torch.tensor([0.0, 1, 2, 3, 4]))
    assert torch.allclose(per_sample[3], guidance.cfg_combine(eps_c[3:4], eps_u[3:4], 3.0)[0])


def test_cfg_matches_the_diffusers_pipeline_formula():
    # diffusers' DiTPipeline / StableDiffusionPipeline: uncond + guidance_scale * (cond - uncond)
    eps_c, eps_u = torch.randn(3, 4), torch.randn(3, 4)
    guidance_scale = 4.0
    theirs = eps_u + guidance_scale * (eps_c - eps_u)
    assert torch.allclose(guidance.cfg_combine(eps_c, eps_u, guidance_scale - 1), theirs, atol=1e-6)


def test_conditional_and_null_come_from_one_forward_call(unet):
    counting = CountingUNet(unet)
    x, t, y = torch.randn(4, 1, 16, 16), torch.full((4,), 500), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        eps = guidance.cfg_eps_model(counting, y, 2.0)(x, t)
        separate_c = unet(x, t, class_labels=y).sample
        separate_u = unet(x, t, class_labels=torch.full((4,), models.NULL_LABEL)).sample
    assert len(counting.calls) == 1 and counting.calls[0][0] == 8
    assert counting.calls[0][1].tolist() == [1, 2, 3, 4] + [models.NULL_LABEL] * 4
    assert torch.allclose(eps, 3 * separate_c - 2 * separate_u, atol=1e-4)
    with torch.no_grad():  # w = 0 needs the conditional pass only
        guidance.cfg_eps_model(counting, y, 0.0)(x, t)
    assert counting.calls[-1][0] == 4


def test_negative_label_replaces_the_null_label(unet):
    counting = CountingUNet(unet)
    x, t = torch.randn(2, 1, 16, 16), torch.full((2,), 300)
    with torch.no_grad():
        guidance.cfg_eps_model(counting, None, 1.0, negative_labels=torch.tensor([3, 3]))(x, t)
    assert counting.calls[0][1].tolist() == [models.NULL_LABEL] * 2 + [3, 3]


def test_any_digit_except_three(unet):
    classifier = models.load_classifier()
    n = 30
    sample = guidance.cfg_sampler(3.0, steps=10, negative_labels=torch.full((n,), 3), unet=unet)
    plain = guidance.cfg_sampler(0.0, steps=10, unet=unet)
    null = torch.full((n,), models.NULL_LABEL)
    with torch.no_grad():
        threes_avoided = (classifier(sample(null, 0)).argmax(1) == 3).sum().item()
        threes_plain = (classifier(plain(torch.full((n,), 3), 0)).argmax(1) == 3).sum().item()
    assert threes_avoided == 0 and threes_plain > n // 2


# --------------------------------------------------------------------------- classifier guidance

def test_classifier_gradient_matches_finite_differences():
    torch.manual_seed(0)
    classifier = models.NoisyDigitClassifier(width=8).double()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    t, y = torch.tensor([100, 700]), torch.tensor([4, 7])
    grad = guidance.classifier_log_prob_grad(classifier, x, t, y)
    for idx in [(0, 0, 3, 5), (1, 0, 8, 8)]:
        h = 1e-6
        bump = torch.zeros_like(x)
        bump[idx] = h
        f = lambda z: torch.log_softmax(classifier(z, t), 1)[torch.arange(2), y].sum()  # noqa: E731
        assert math.isclose(grad[idx].item(), ((f(x + bump) - f(x - bump)) / (2 * h)).item(), rel_tol=1e-4,
                            abs_tol=1e-8)


def test_bayes_cfg_with_exact_scores_is_classifier_guidance_with_the_exact_classifier():
    """On a Gaussian mixture every term is exact: grad log p(x_t | c) - grad log p(x_t) = grad log p(c | x_t)."""
    mixture = datasets.GaussianMixture2D()
    component = datasets.GaussianMixture2D(means=(mixture.means[2],), std=mixture.std, weights=(1.0,))
    x = torch.randn(64, 2, dtype=torch.float64) * 2
    for t in (50, 400, 900):
        ab = SCHEDULE.alpha_bar[t]
        sigma = torch.sqrt(1 - ab)
        eps_uncond, eps_cond = -sigma * mixture.score(x, ab), -sigma * component.score(x, ab)
        xr = x.clone().requires_grad_(True)
        log_comp, _, _ = mixture.responsibilities(xr, ab)
        log_posterior = torch.log_softmax(log_comp, dim=1)[:, 2].sum()  # log p(c = 2 | x_t)
        grad = torch.autograd.grad(log_posterior, xr)[0]
        for w in (1.0, 4.0):
            via_classifier = guidance.classifier_guided_eps(SCHEDULE, eps_cond, x, t, grad, w)
            # classifier guidance on the unconditional model, at scale 1 + w, equals CFG at scale w
            via_unconditional = guidance.classifier_guided_eps(SCHEDULE, eps_uncond, x, t, grad, 1 + w)
            assert torch.allclose(guidance.cfg_combine(eps_cond, eps_uncond, w), via_classifier, atol=1e-8)
            assert torch.allclose(via_unconditional, via_classifier, atol=1e-8)


def test_noisy_classifier_is_shipped_and_reads_noisy_digits():
    classifier = models.load_noisy_classifier()
    quality = checkpoints.read_manifest()["noisy_digit_classifier"]["quality"]
    assert quality["test_accuracy_t0"] > 0.9 and quality["test_accuracy_t250"] > quality["test_accuracy_t999"]
    x, y = datasets.digits("test")
    with torch.no_grad():
        assert (classifier(x, torch.zeros(len(x), dtype=torch.long)).argmax(1) == y).float().mean() > 0.9


def test_classifier_guidance_steers_the_unconditional_model(unet):
    classifier, noisy = models.load_classifier(), models.load_noisy_classifier()
    labels = torch.arange(10).repeat(2)
    with torch.no_grad():
        unguided = guidance.classifier_guided_sampler(0.0, steps=10, classifier=noisy, unet=unet)(labels, 0)
        guided = guidance.classifier_guided_sampler(4.0, steps=10, classifier=noisy, unet=unet)(labels, 0)
        accuracy = [(classifier(x).argmax(1) == labels).float().mean().item() for x in (unguided, guided)]
    assert accuracy[1] >= 0.7 and accuracy[1] > accuracy[0] + 0.3


# --------------------------------------------------------------------------- label dropout, sampler, bad input

def test_drop_labels_rate_and_null_label():
    labels = torch.arange(10).repeat(5000)
    dropped = guidance.drop_labels(labels, 0.15, torch.Generator().manual_seed(0))
    changed = dropped != labels
    assert (dropped[changed] == models.NULL_LABEL).all() and abs(changed.float().mean() - 0.15) < 0.01
    assert torch.equal(labels, torch.arange(10).repeat(5000))  # not in place
    assert torch.equal(guidance.drop_labels(labels, 0.0), labels)


def test_cfg_sampler_for_the_harness_is_seeded_and_independent_of_batch_size(unet):
    labels = torch.arange(6)
    a = guidance.cfg_sampler(1.0, steps=3, unet=unet, batch_size=4)(labels, 5)
    b = guidance.cfg_sampler(1.0, steps=3, unet=unet, batch_size=100)(labels, 5)
    assert a.shape == (6, 1, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, guidance.cfg_sampler(1.0, steps=3, unet=unet)(labels, 6))


def test_bad_input_is_a_clear_error(unet):
    eps = torch.randn(2, 3)
    with pytest.raises(ValueError, match="same shape"):
        guidance.cfg_combine(eps, torch.randn(2, 4), 1.0)
    with pytest.raises(ValueError, match=r"w must be a number or have shape \(2,\)"):
        guidance.cfg_combine(eps, eps, torch.ones(3))
    with pytest.raises(ValueError, match="must lie in 0..10"):
        guidance.cfg_eps_model(unet, torch.tensor([11, 0]), 1.0)(torch.randn(2, 1, 16, 16), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="integer class labels"):
        guidance.as_labels(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="probability"):
        guidance.drop_labels(torch.tensor([1, 2]), 1.5)
    with pytest.raises(ValueError, match="null label"):
        guidance.classifier_log_prob_grad(models.load_noisy_classifier(), torch.randn(1, 1, 16, 16),
                                          torch.tensor([5]), torch.tensor([models.NULL_LABEL]))


# --------------------------------------------------------------------------- the widget

def test_guidance_widget_reacts_and_caches(unet):
    explorer = widgets.GuidanceExplorer(unet, n=4, steps=3, classifier=models.load_classifier())
    first = explorer.image.value
    explorer.w.value = 3.0
    assert explorer.image.value != first and "w = 3" in explorer.readout.value
    assert len(explorer.samples) == 2
    explorer.label.value = widgets.ANY  # each control change is one displayed setting: (3, any, none) ...
    explorer.negative.value = "3"  # ... then (3, any, avoid 3): "any digit except 3"
    assert explorer.key() == (3.0, models.NULL_LABEL, 3) and len(explorer.samples) == 4
    assert "avoid 3" in explorer.readout.value
    explorer.negative.value = widgets.NONE
    explorer.label.value = "3"
    seen = len(explorer.samples)
    explorer.w.value = 0.0
    assert explorer.image.value == first and len(explorer.samples) == seen  # back to the start: from the cache
    assert len(explorer.latencies) == len(explorer.samples)


# --------------------------------------------------------------------------- the checkers, right and wrong

def _cfg_right(eps_cond, eps_uncond, w):
    return (1 + w) * eps_cond - w * eps_uncond


def test_check_cfg_combine_accepts_the_answer_and_catches_mistakes():
    check_cfg_combine(_cfg_right)
    check_cfg_combine(lambda c, u, w: u + (1 + w) * (c - u))
    wrong = {
        "lambda form with lambda = w": (lambda c, u, w: u + w * (c - u), "lambda form"),
        "signs swapped": (lambda c, u, w: (1 - w) * c + w * u, "signs are swapped|lambda form"),
        "arguments swapped": (lambda c, u, w: (1 + w) * u - w * c, "swapped"),
        "float32 always": (lambda c, u, w: _cfg_right(c, u, w).float(), "dtype"),
        "not implemented": (lambda c, u, w: (_ for _ in ()).throw(NotImplementedError()), "not implemented"),
    }
    for name, (fn, message) in wrong.items():
        with pytest.raises(ExerciseFailed, match=message):
            check_cfg_combine(fn)


def _guided_right(eps, x_t, t, labels, classifier, w, alpha_bar):
    x = x_t.detach().requires_grad_(True)
    log_p = torch.log_softmax(classifier(x, t), dim=1)[torch.arange(len(x)), labels].sum()
    grad = torch.autograd.grad(log_p, x)[0]
    sigma = (1 - alpha_bar[t]).sqrt().float().reshape(-1, *([1] * (x_t.dim() - 1)))
    return eps - w * sigma * grad


def test_check_classifier_guided_eps_accepts_the_answer_and_catches_mistakes():
    check_classifier_guided_eps(_guided_right)

    def with_grad(transform):
        def fn(eps, x_t, t, labels, classifier, w, alpha_bar):
            x = x_t.detach().requires_grad_(True)
            probs = torch.softmax(classifier(x, t), dim=1)[torch.arange(len(x)), labels]
            log_p = torch.log(probs)
            sigma = (1 - alpha_bar[t]).sqrt().float().reshape(-1, *([1] * (x_t.dim() - 1)))
            return transform(eps, x, probs, log_p, sigma, w)
        return fn

    grad = torch.autograd.grad
    wrong = {
        "plus sign": (with_grad(lambda e, x, p, lp, s, w: e + w * s * grad(lp.sum(), x)[0]), "sign"),
        "no sqrt(1 - alpha_bar)": (with_grad(lambda e, x, p, lp, s, w: e - w * grad(lp.sum(), x)[0]),
                                   "multiplied by sqrt"),
        "mean over the batch": (with_grad(lambda e, x, p, lp, s, w: e - w * s * grad(lp.mean(), x)[0]),
                                "SUM"),
        "probability, not log": (with_grad(lambda e, x, p, lp, s, w: e - w * s * grad(p.sum(), x)[0]),
                                 "log_softmax"),
        "sigma of the first sample": (with_grad(lambda e, x, p, lp, s, w: e - w * s[0] * grad(lp.sum(), x)[0]),
                                      "timesteps"),
    }
    for name, (fn, message) in wrong.items():
        with pytest.raises(ExerciseFailed, match=message):
            check_classifier_guided_eps(fn)


def _drop_right(labels, p_uncond, generator):
    labels = labels.clone()
    labels[torch.rand(labels.shape, generator=generator) < p_uncond] = models.NULL_LABEL
    return labels


def test_check_drop_labels_accepts_the_answer_and_catches_mistakes():
    check_drop_labels(_drop_right)

    def in_place(labels, p, g):
        labels[torch.rand(labels.shape, generator=g) < p] = models.NULL_LABEL
        return labels

    def block(labels, p, g):
        labels = labels.clone()
        labels[:int(p * len(labels))] = models.NULL_LABEL
        return labels

    def zero_label(labels, p, g):
        labels = labels.clone()
        labels[torch.rand(labels.shape, generator=g) < p] = 0
        return labels

    def keep_rate(labels, p, g):
        labels = labels.clone()
        labels[torch.rand(labels.shape, generator=g) > p] = models.NULL_LABEL
        return labels

    def global_rng(labels, p, g):
        torch.manual_seed(0)
        labels = labels.clone()
        labels[torch.rand(labels.shape) < p] = models.NULL_LABEL
        return labels

    def float_labels(labels, p, g):
        return _drop_right(labels, p, g).float()

    def rate_off(labels, p, g):
        return _drop_right(labels, p * 0.8, g)

    wrong = {in_place: "in place", block: "random positions", zero_label: "null label", keep_rate: "below p_uncond",
             global_rng: "generator", float_labels: "dtype", rate_off: "expect"}
    for fn, message in wrong.items():
        with pytest.raises(ExerciseFailed, match=message):
            check_drop_labels(fn)


# --------------------------------------------------------------------------- the tilted distribution (issue 17)

def test_tilted_samples_match_the_tilt_on_a_grid():
    """Importance resampling gives the mean of p(x | c) p(c | x)^w computed by quadrature on a grid."""
    mixture = datasets.GaussianMixture2D()
    axis = torch.linspace(-4, 4, 401, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    for alpha_bar, w in ((1.0, 16.0), (0.2, 4.0)):
        component = guidance.mixture_component(mixture, 2)
        log_comp, _, _ = mixture.responsibilities(grid, alpha_bar)
        log_density = component.log_prob(grid, alpha_bar) + w * torch.log_softmax(log_comp, 1)[:, 2]
        weights = torch.softmax(log_density, 0)
        exact_mean = (weights[:, None] * grid).sum(0)
        samples = guidance.tilted_mixture_samples(mixture, 2, w, 4000, seed=0, alpha_bar=alpha_bar)
        assert (samples.double().mean(0) - exact_mean).abs().max() < 0.03, (alpha_bar, w)
    # at alpha_bar = 0.2 the components overlap, and the tilt moves the mean away from the neighbours
    assert exact_mean[1] > 1.6 * 0.2 ** 0.5 + 0.1


def test_guidance_does_not_sample_the_tilted_distribution():
    """With exact scores, CFG at w = 16 lands far from p(x | c) p(c | x)^w: shifted and much narrower."""
    mixture, schedule = datasets.GaussianMixture2D(), linear_schedule()
    x, _ = ddim.ddim_sample(guidance.mixture_cfg_eps_model(mixture, 2, schedule, 16.0), schedule, (400, 2),
                            steps=50, seed=0, progress=False)
    target = guidance.tilted_mixture_samples(mixture, 2, 16.0, 2000, seed=0)
    assert (target.mean(0) - torch.tensor([0.0, 1.6])).abs().max() < 0.03  # the tilt hardly moves component 2
    assert 0.23 < target.std(0).mean() < 0.27
    assert (x.mean(0) - target.mean(0)).norm() > 0.5 and x.std(0).mean() < 0.5 * target.std(0).mean()
    plain, _ = ddim.ddim_sample(guidance.mixture_cfg_eps_model(mixture, 2, schedule, 0.0), schedule, (400, 2),
                                steps=50, seed=0, progress=False)
    assert (plain.mean(0) - torch.tensor([0.0, 1.6])).abs().max() < 0.05  # w = 0 is the component itself
