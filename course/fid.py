"""The Fréchet distance, the workbook's feature network, and one call that scores a batch of samples.

FID (Heusel et al. 2017) fits a Gaussian to the features of real and of generated images and reports the
2-Wasserstein (Fréchet) distance between the two Gaussians:

    d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).

The features here are the penultimate layer of the workbook's digit classifier (64-d), not Inception-v3,
which cannot be downloaded offline; notebook 11 says what that changes.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from . import validate
from .datasets import digits
from .models import load_classifier


class FIDWarning(UserWarning):
    """A Fréchet distance or a covariance that cannot be trusted as it stands."""


def _as_float64(name: str, value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    array = np.asarray(value, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf")
    return array


def _check_statistics(mu, sigma, which: str):
    mu, sigma = _as_float64(f"mu_{which}", mu), _as_float64(f"sigma_{which}", sigma)
    if mu.ndim != 1:
        raise ValueError(f"mu_{which} must be a vector of shape (D,), got shape {mu.shape}")
    if sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"sigma_{which} must have shape ({len(mu)}, {len(mu)}) to match mu_{which}, "
                         f"got {sigma.shape}")
    if not np.allclose(sigma, sigma.T, rtol=1e-8, atol=1e-10 * max(1.0, np.abs(sigma).max())):
        raise ValueError(f"sigma_{which} must be symmetric (a covariance matrix)")
    return mu, (sigma + sigma.T) / 2


def _psd_sqrt(sigma: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root through eigh; eigenvalues that rounding made slightly negative are set to 0."""
    eigvals, eigvecs = np.linalg.eigh(sigma)
    scale = max(abs(eigvals).max(), 1e-300)
    if eigvals.min() < -1e-6 * scale:
        warnings.warn(f"{name} has a negative eigenvalue {eigvals.min():.3g} (largest {scale:.3g}): it is not a "
                      "covariance matrix; treating the negative part as 0", FIDWarning, stacklevel=3)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T


def frechet_distance(mu_1, sigma_1, mu_2, sigma_2) -> float:
    """||mu_1 - mu_2||^2 + Tr(S_1) + Tr(S_2) - 2 Tr((S_1 S_2)^(1/2)), computed stably, as a real float.

    Tr((S_1 S_2)^(1/2)) = Tr((S_1^(1/2) S_2 S_1^(1/2))^(1/2)): the matrix inside is symmetric positive
    semi-definite, so its square root's trace is the sum of the square roots of its eigenvalues. No
    non-symmetric sqrtm, so no complex parts. Near-singular covariances are fine; a covariance with clearly
    negative eigenvalues gives a FIDWarning.
    """
    mu_1, sigma_1 = _check_statistics(mu_1, sigma_1, "1")
    mu_2, sigma_2 = _check_statistics(mu_2, sigma_2, "2")
    if len(mu_1) != len(mu_2):
        raise ValueError(f"the two feature dimensions differ: {len(mu_1)} and {len(mu_2)}")
    root_1 = _psd_sqrt(sigma_1, "sigma_1")
    middle = root_1 @ sigma_2 @ root_1
    eigvals = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigvals, 0, None)).sum()
    diff = mu_1 - mu_2
    distance = diff @ diff + np.trace(sigma_1) + np.trace(sigma_2) - 2 * trace_sqrt
    return float(max(distance, 0.0))


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64.

    Warns when N <= D: the covariance then has rank below D, and FID is badly biased.
    """
    feats = _as_float64("features", features)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"features must have shape (N, D) with N >= 2, got {feats.shape}")
    n, d = feats.shape
    if n <= d:
        warnings.warn(f"only N = {n} samples for D = {d} features: the covariance has rank at most {n - 1} < {d}, "
                      f"and FID is strongly biased; use N well above D", FIDWarning, stacklevel=2)
    return feats.mean(0), np.cov(feats, rowvar=False)


# --------------------------------------------------------------------------- the workbook's "Inception"

def feature_network():
    """The shipped digit classifier (sha256-verified), whose 64-d penultimate layer is the FID feature space."""
    return load_classifier()


@torch.no_grad()
def image_features(images, network=None, batch_size: int = 512) -> torch.Tensor:
    """(N, 1, 16, 16) digits in [-1, 1] -> (N, 64) features of the feature network."""
    images = validate.floating("images", images)
    if images.dim() != 4 or images.shape[1:] != (1, 16, 16):
        raise ValueError(f"images must have shape (N, 1, 16, 16) like datasets.digits(), got {tuple(images.shape)}")
    network = network or feature_network()
    images = images.clamp(-1, 1).float()
    return torch.cat([network.features(chunk) for chunk in images.split(batch_size)])


def fid(images_1, images_2, network=None) -> float:
    """FID between two batches of digit images, in the feature network's space."""
    network = network or feature_network()
    stats_1 = feature_statistics(image_features(images_1, network))
    stats_2 = feature_statistics(image_features(images_2, network))
    return frechet_distance(*stats_1, *stats_2)


def diversity(features: torch.Tensor) -> float:
    """Mean pairwise L2 distance between feature vectors: small when samples collapse onto a few modes."""
    feats = features.double()
    n = len(feats)
    return float(torch.cdist(feats, feats).sum() / (n * (n - 1)))


SAMPLE_COUNTS = {"fast": 200, "full": 1000}  # fast: CI and notebooks; full: benchmarks. Both above D = 64.


def floor_batch(real_train: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """n real training images drawn without replacement (seeded): FID's floor is theirs against the held-out set."""
    gen = torch.Generator().manual_seed(seed)
    return real_train[torch.randperm(len(real_train), generator=gen)[:n]]


def fid_to_statistics(images: torch.Tensor, statistics: tuple, network=None) -> float:
    """FID of a batch of images against precomputed reference statistics (mu, sigma)."""
    return frechet_distance(*feature_statistics(image_features(images, network)), *statistics)


FLOOR_SEEDS = 5  # the floor's spread is taken over this many seeds, at least


def floor_spread(n: int, seeds: int = FLOOR_SEEDS, network=None) -> dict:
    """The real-vs-real floor at sample size n as mean and standard deviation over ``seeds`` seeds (0, 1, ...).

    Each seed draws n real training digits (``floor_batch``) and scores them against the held-out digits. Two FIDs
    at the same n differ for real only by more than this spread; a generated batch can also score *below* the
    mean, because the reference set (297 held-out digits) is small and the floor batch is one random draw.
    Returns n, seeds, fid_floor_mean, fid_floor_sd (sample standard deviation) and the per-seed floors.
    """
    validate.positive_int("n", n)
    if seeds < 2:
        raise ValueError(f"a spread needs at least 2 seeds, got {seeds}")
    network = network or feature_network()
    real_train, _ = digits("train")
    if n > len(real_train):
        raise ValueError(f"n = {n} is more than the {len(real_train)} real training digits")
    test_stats = feature_statistics(image_features(digits("test")[0], network))
    floors = [fid_to_statistics(floor_batch(real_train, n, seed), test_stats, network) for seed in range(seeds)]
    return {"n": n, "seeds": seeds, "fid_floor_mean": float(np.mean(floors)),
            "fid_floor_sd": float(np.std(floors, ddof=1)), "floors": floors}


def evaluate(samples: torch.Tensor, labels: torch.Tensor | None = None, seed: int = 0, network=None) -> dict:
    """Score generated digits against the held-out real digits, each figure beside its real-data baseline.

    Returns n, fid, fid_floor (real training digits vs the held-out ones, at the same n), class_accuracy and
    real_accuracy (when labels are given), and diversity beside real_diversity.
    """
    network = network or feature_network()
    samples = validate.floating("samples", samples)
    real_test, test_labels = digits("test")
    real_train, _ = digits("train")
    n = len(samples)
    real = floor_batch(real_train, n, seed)
    sample_feats = image_features(samples, network)
    test_stats = feature_statistics(image_features(real_test, network))
    report = {"n": n,
              "fid": frechet_distance(*feature_statistics(sample_feats), *test_stats),
              "fid_floor": fid_to_statistics(real, test_stats, network),
              "diversity": diversity(sample_feats),
              "real_diversity": diversity(image_features(real, network))}
    if labels is not None:
        labels = validate.as_tensor("labels", labels).long()
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), one per sample, got {tuple(labels.shape)}")
        with torch.no_grad():
            report["class_accuracy"] = (network(samples.clamp(-1, 1)).argmax(1) == labels).float().mean().item()
            report["real_accuracy"] = (network(real_test).argmax(1) == test_labels).float().mean().item()
    return report


def real_digit_sampler(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Not a model: real training digits of the asked-for classes, the best any sampler could do."""
    images, digit_labels = digits("train")
    gen = torch.Generator().manual_seed(seed)
    by_class = [torch.nonzero(digit_labels == y).flatten() for y in range(10)]
    return torch.stack([images[by_class[y][torch.randint(0, len(by_class[y]), (1,), generator=gen)]][0]
                        for y in labels.tolist()])


def score_sampler(sample_fn, mode: str = "fast", seed: int = 0, network=None) -> dict:
    """Draw a fixed, seeded, class-balanced set of samples with ``sample_fn(labels, seed)`` and ``evaluate`` it."""
    if mode not in SAMPLE_COUNTS:
        raise ValueError(f"mode must be one of {list(SAMPLE_COUNTS)}, got {mode!r}")
    labels = torch.arange(10).repeat(SAMPLE_COUNTS[mode] // 10)
    samples = sample_fn(labels, seed)
    return {"mode": mode, **evaluate(samples, labels, seed, network)}


def wasserstein_1d(u_values, v_values) -> float:
    """Earth mover's distance W_1 between two 1D samples: the area between their CDFs (mass x distance moved)."""
    u, v = np.sort(_as_float64("u_values", u_values).ravel()), np.sort(_as_float64("v_values", v_values).ravel())
    if len(u) == 0 or len(v) == 0:
        raise ValueError("both samples need at least one value")
    grid = np.concatenate([u, v])
    grid.sort()
    widths = np.diff(grid)
    cdf_u = np.searchsorted(u, grid[:-1], side="right") / len(u)
    cdf_v = np.searchsorted(v, grid[:-1], side="right") / len(v)
    return float(np.sum(np.abs(cdf_u - cdf_v) * widths))
