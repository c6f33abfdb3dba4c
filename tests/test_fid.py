"""The Fréchet distance agrees with scipy's sqrtm, stays real on near-singular covariances, and the harness scores."""
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from course import datasets, fid


def _random_covariance(rng, d, condition=10.0):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0, 1.0 / condition, d)) @ q.T


def _scipy_reference(mu_1, s_1, mu_2, s_2):
    covmean = scipy.linalg.sqrtm(s_1 @ s_2)
    return float(((mu_1 - mu_2) ** 2).sum() + np.trace(s_1) + np.trace(s_2) - 2 * np.trace(covmean).real)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_distance_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu_1, mu_2 = rng.standard_normal(d), rng.standard_normal(d)
    s_1, s_2 = _random_covariance(rng, d), _random_covariance(rng, d)
    ours, theirs = fid.frechet_distance(mu_1, s_1, mu_2, s_2), _scipy_reference(mu_1, s_1, mu_2, s_2)
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_frechet_distance_of_gaussians_has_the_closed_form():
    # 1D: (m1 - m2)^2 + (s1 - s2)^2; identical statistics give 0; torch inputs work too.
    assert fid.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1)
    mu, sigma = torch.randn(8, dtype=torch.float64), torch.eye(8, dtype=torch.float64) * 2
    assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-10)


def test_near_singular_covariances_give_a_real_number_without_warning():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 64))  # rank 3 in 64 dimensions
    s = np.cov(feats, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = fid.frechet_distance(feats.mean(0), s, feats.mean(0) + 0.1, s)
    assert isinstance(value, float) and np.isfinite(value) and value == pytest.approx(64 * 0.01, rel=1e-3, abs=1e-6)
    with pytest.warns(fid.FIDWarning, match="negative eigenvalue"):
        fid.frechet_distance(np.zeros(2), np.diag([1.0, -0.5]), np.zeros(2), np.eye(2))


def test_bad_statistics_are_clear_errors():
    with pytest.raises(ValueError, match=r"sigma_1 must have shape \(3, 3\)"):
        fid.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="feature dimensions differ"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="symmetric"):
        fid.frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        fid.frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))


def test_feature_statistics_and_the_small_n_warning():
    feats = torch.randn(500, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mu, sigma = fid.feature_statistics(feats)
    assert np.allclose(mu, feats.mean(0).numpy()) and np.allclose(sigma, np.cov(feats.numpy(), rowvar=False))
    with pytest.warns(fid.FIDWarning, match="N = 8 samples for D = 8"):
        fid.feature_statistics(feats[:8])


def test_fid_sees_a_difference_the_floor_does_not():
    real_test, labels = datasets.digits("test")
    real_train, _ = datasets.digits("train")
    network = fid.feature_network()
    floor = fid.fid(real_train[:297], real_test, network)
    noisy = fid.fid((real_train[:297] + 0.3 * torch.randn(297, 1, 16, 16)).clamp(-1, 1), real_test, network)
    ones_only = fid.fid(real_train[datasets.digits("train")[1] == 1][:100], real_test, network)
    assert floor < noisy and floor < ones_only


def test_evaluate_reports_every_figure_beside_its_baseline():
    real_train, train_labels = datasets.digits("train")
    report = fid.evaluate(real_train[-200:], train_labels[-200:])
    for key in ("n", "fid", "fid_floor", "diversity", "real_diversity", "class_accuracy", "real_accuracy"):
        assert key in report, key
    assert report["n"] == 200 and report["class_accuracy"] > 0.9
    assert report["fid"] < 3 * report["fid_floor"] + 1  # real digits score like real digits
    collapsed = fid.evaluate(real_train[:1].expand(200, -1, -1, -1).clone() + 0.01 * torch.randn(200, 1, 16, 16))
    assert collapsed["diversity"] < 0.2 * collapsed["real_diversity"] and collapsed["fid"] > 10 * report["fid"]
    with pytest.raises(ValueError, match=r"labels must have shape \(200,\)"):
        fid.evaluate(real_train[:200], train_labels[:10])
    with pytest.raises(ValueError, match=r"shape \(N, 1, 16, 16\)"):
        fid.image_features(torch.zeros(4, 3, 16, 16))


def test_score_sampler_is_seeded_and_checks_the_mode():
    real_train, train_labels = datasets.digits("train")

    def lookup_sampler(labels, seed):  # "samples" = real digits of the asked-for class
        gen = torch.Generator().manual_seed(seed)
        picks = [torch.nonzero(train_labels == y)[torch.randint(0, 100, (1,), generator=gen)].item() for y in labels]
        return real_train[picks]

    first, second = fid.score_sampler(lookup_sampler), fid.score_sampler(lookup_sampler)
    assert first == second and first["n"] == 200 and first["class_accuracy"] > 0.9
    with pytest.raises(ValueError, match="mode must be one of"):
        fid.score_sampler(lookup_sampler, mode="slow")


def test_wasserstein_1d_matches_scipy():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    u, v = rng.standard_normal(300), rng.exponential(size=200) + 1
    assert fid.wasserstein_1d(u, v) == pytest.approx(wasserstein_distance(u, v), rel=1e-12)
    assert fid.wasserstein_1d([0.0], [3.0]) == pytest.approx(3.0)  # all the mass moves 3


# --------------------------------------------------------------------------- notebook 11's checkers

from course.exercises.fid import check_feature_statistics, check_frechet_distance  # noqa: E402
from course.exercises import ExerciseFailed  # noqa: E402


def stats_right(feats):
    return feats.mean(0), np.cov(feats, rowvar=False)


@pytest.mark.parametrize("wrong, message", [
    (lambda f: (f.mean(0), np.cov(f, rowvar=False, bias=True)), "biased covariance"),
    (lambda f: (f.mean(0), np.cov(f)), "between samples"),
    (lambda f: (f.mean(0), f.T @ f / (len(f) - 1)), "subtract the mean"),
    (lambda f: (f.mean(1), np.cov(f, rowvar=False)), "mu has shape"),
    (lambda f: np.cov(f, rowvar=False), "tuple"),
])
def test_feature_statistics_checker(wrong, message, capsys):
    check_feature_statistics(stats_right)
    assert "feature_statistics: all" in capsys.readouterr().out
    with pytest.raises(ExerciseFailed, match=message):
        check_feature_statistics(wrong)


def frechet_right(mu_1, s_1, mu_2, s_2):
    return float(((mu_1 - mu_2) ** 2).sum() + np.trace(s_1 + s_2) - 2 * np.trace(scipy.linalg.sqrtm(s_1 @ s_2)).real)


@pytest.mark.parametrize("wrong, message", [
    (lambda m1, s1, m2, s2: frechet_right(m1, s1, m2, s2) + np.trace(scipy.linalg.sqrtm(s1 @ s2)).real, "factor 2"),
    (lambda m1, s1, m2, s2: float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.sqrt(np.trace(s1 @ s2))),
     "not the square root of the trace"),
    (lambda m1, s1, m2, s2: float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.sqrt(np.abs(s1 * s2)).sum()),
     "element-wise"),
    (lambda m1, s1, m2, s2: frechet_right(m1, s1, m2, s2) - ((m1 - m2) ** 2).sum() + np.linalg.norm(m1 - m2),
     "squared distance"),
    (lambda m1, s1, m2, s2: complex(frechet_right(m1, s1, m2, s2)), "complex"),
    (lambda m1, s1, m2, s2: [frechet_right(m1, s1, m2, s2)], "one number"),
])
def test_frechet_distance_checker(wrong, message, capsys):
    check_frechet_distance(frechet_right)
    assert "frechet_distance: all" in capsys.readouterr().out
    with pytest.raises(ExerciseFailed, match=message):
        check_frechet_distance(wrong)


def test_floor_spread_is_the_spread_of_the_seeded_floors():
    network = fid.feature_network()
    spread = fid.floor_spread(200, seeds=5, network=network)
    assert spread["seeds"] == 5 and len(spread["floors"]) == 5 and len(set(spread["floors"])) == 5
    real_train, _ = datasets.digits("train")
    real_test, _ = datasets.digits("test")
    stats = fid.feature_statistics(fid.image_features(real_test, network))
    assert spread["floors"][3] == pytest.approx(fid.fid_to_statistics(fid.floor_batch(real_train, 200, 3), stats,
                                                                       network))
    assert spread["fid_floor_mean"] == pytest.approx(np.mean(spread["floors"]))
    assert spread["fid_floor_sd"] == pytest.approx(np.std(spread["floors"], ddof=1)) and spread["fid_floor_sd"] > 1
    # evaluate's floor for seed s is the spread's floor number s
    report = fid.evaluate(fid.floor_batch(real_train, 200, 7), seed=3, network=network)
    assert report["fid_floor"] == pytest.approx(spread["floors"][3])
    with pytest.raises(ValueError, match="at least 2 seeds"):
        fid.floor_spread(200, seeds=1)
    with pytest.raises(ValueError, match="real training digits"):
        fid.floor_spread(5000)
