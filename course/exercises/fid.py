"""Checkers for notebook 11: the feature statistics and the Fréchet distance (in its stable symmetric form for the
notebook's exercise; check_frechet_distance, the sqrtm version, stays for the earlier exercise)."""
from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from .. import fid
from .core import ExerciseFailed, call_student, passed


def _as_numpy(exercise: str, name: str, value, case: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise ExerciseFailed(exercise, f"{name} should be a numpy array or a torch tensor, got "
                                       f"{type(value).__name__}\nwhile checking: {case}")
    if np.iscomplexobj(value):
        raise ExerciseFailed(exercise, f"{name} is complex: keep only real numbers\nwhile checking: {case}")
    return value.astype(np.float64)


def check_feature_statistics(student_fn) -> None:
    """Check ``feature_statistics(features) -> (mu, sigma)`` for (N, D) features: mean and unbiased covariance."""
    name = "feature_statistics"
    rng = np.random.default_rng(0)
    cases = [("400 samples of 8 correlated features", rng.standard_normal((400, 8)) @ rng.standard_normal((8, 8)) + 3),
             ("100 samples of 64 features", rng.standard_normal((100, 64)) * np.linspace(0.1, 2, 64)),
             ("5 samples of 3 features", rng.standard_normal((5, 3)))]
    for case, feats in cases:
        result = call_student(name, student_fn, case, feats.copy())
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ExerciseFailed(name, f"return a tuple (mu, sigma), got {type(result).__name__}\nwhile checking: {case}")
        mu = _as_numpy(name, "mu", result[0], case)
        sigma = _as_numpy(name, "sigma", result[1], case)
        n, d = feats.shape
        if mu.shape != (d,):
            raise ExerciseFailed(name, f"mu has shape {mu.shape}, expected ({d},): average over the samples "
                                       f"(axis 0), one mean per feature\nwhile checking: {case}")
        if sigma.shape != (d, d):
            hint = " (that is a covariance between samples: features are the columns)" if sigma.shape == (n, n) else ""
            raise ExerciseFailed(name, f"sigma has shape {sigma.shape}, expected ({d}, {d}){hint}\nwhile checking: {case}")
        ref_mu, ref_sigma = feats.mean(0), np.cov(feats, rowvar=False)
        if not np.allclose(mu, ref_mu, rtol=1e-6, atol=1e-9):
            raise ExerciseFailed(name, f"mu differs from the mean of each feature by up to "
                                       f"{np.abs(mu - ref_mu).max():.3g}\nwhile checking: {case}")
        if not np.allclose(sigma, ref_sigma, rtol=1e-6, atol=1e-9):
            hint = ""
            if np.allclose(sigma, ref_sigma * (n - 1) / n, rtol=1e-6):
                hint = "\nhint: that is the biased covariance (divided by N); divide by N - 1"
            elif np.allclose(sigma, (feats.T @ feats) / (n - 1), rtol=1e-6):
                hint = "\nhint: subtract the mean before forming the products"
            raise ExerciseFailed(name, f"sigma differs from the covariance by up to "
                                       f"{np.abs(sigma - ref_sigma).max():.3g}{hint}\nwhile checking: {case}")
    passed(name, len(cases), "correlated features, N close to D, tiny N")


def _gaussian_case(rng, d, condition):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return rng.standard_normal(d), (q * np.geomspace(1.0, 1.0 / condition, d)) @ q.T


def _frechet_cases(rng) -> list:
    """Random Gaussians (D = 1 to 64), identical statistics, equal covariances, and a singular covariance."""
    cases = []
    for d, condition in [(1, 1.0), (4, 5.0), (16, 50.0), (64, 10.0)]:
        (mu_1, s_1), (mu_2, s_2) = _gaussian_case(rng, d, condition), _gaussian_case(rng, d, condition)
        cases.append((f"D = {d}, two random Gaussians", mu_1, s_1, mu_2, s_2))
    mu, s = _gaussian_case(rng, 8, 3.0)
    cases.append(("identical statistics (the answer is 0)", mu, s, mu.copy(), s.copy()))
    cases.append(("equal covariances, different means (the answer is ||mu_1 - mu_2||^2)", mu, s, mu + 0.5, s.copy()))
    cases.append(_rank_deficient_case(rng))
    return cases


def check_frechet_distance(student_fn) -> None:
    """Check ``frechet_distance(mu_1, sigma_1, mu_2, sigma_2) -> float`` against scipy's sqrtm and the stable form."""
    name = "frechet_distance"
    rng = np.random.default_rng(1)
    cases = _frechet_cases(rng)
    for case, mu_1, s_1, mu_2, s_2 in cases:
        got = call_student(name, student_fn, case, mu_1.copy(), s_1.copy(), mu_2.copy(), s_2.copy())
        if isinstance(got, (np.ndarray, torch.Tensor)) and np.size(got) == 1:
            got = got.item()
        if isinstance(got, complex) or np.iscomplexobj(got):
            raise ExerciseFailed(name, f"the distance is complex ({complex(got):.6g}): take the real part of the "
                                       "trace of the matrix square root, np.trace(...).real (its imaginary part is "
                                       f"rounding error)\nwhile checking: {case}")
        if not isinstance(got, (float, int, np.floating)):
            raise ExerciseFailed(name, f"return one number, got {type(got).__name__}\nwhile checking: {case}")
        expected = fid.frechet_distance(mu_1, s_1, mu_2, s_2)
        scipy_value = float(((mu_1 - mu_2) ** 2).sum() + np.trace(s_1 + s_2)
                            - 2 * np.trace(scipy.linalg.sqrtm(s_1 @ s_2)).real)
        if not np.isclose(got, expected, rtol=1e-6, atol=1e-8):
            raise ExerciseFailed(name, f"got {float(got):.8g}, expected {expected:.8g} (scipy's sqrtm gives "
                                       f"{scipy_value:.8g})\nwhile checking: {case}"
                                       + _frechet_hint(got, mu_1, s_1, mu_2, s_2))
    passed(name, len(cases), "D = 1 to 64, identical statistics, equal covariances, singular covariances; "
                             "agrees with scipy's sqrtm")


def _rank_deficient_case(rng):
    """Statistics of 20 samples in D = 32: singular covariances, for which scipy's sqrtm returns a complex matrix."""
    feats_1 = rng.standard_normal((20, 32)) @ rng.standard_normal((32, 32)) / 4
    feats_2 = rng.standard_normal((20, 32)) * 0.7 + 0.2
    return ("N = 20 samples in D = 32 (singular covariances: sqrtm of their product is complex)",
            feats_1.mean(0), np.cov(feats_1, rowvar=False), feats_2.mean(0), np.cov(feats_2, rowvar=False))


def _frechet_hint(got, mu_1, s_1, mu_2, s_2) -> str:
    mean_term = ((mu_1 - mu_2) ** 2).sum()
    trace_term = np.trace(scipy.linalg.sqrtm(s_1 @ s_2)).real
    if np.isclose(got, mean_term + np.trace(s_1 + s_2) - trace_term, rtol=1e-6):
        hint = "the cross term is -2 Tr((S_1 S_2)^(1/2)): the factor 2 is missing"
    elif np.isclose(got, mean_term + np.trace(s_1 + s_2) - 2 * np.sqrt(np.abs(np.trace(s_1 @ s_2))), rtol=1e-6):
        hint = "take the matrix square root of S_1 S_2, then its trace, not the square root of the trace"
    elif np.isclose(got, mean_term + np.trace(s_1 + s_2) - 2 * np.sqrt(np.abs(s_1 * s_2)).sum(), rtol=1e-6):
        hint = "an element-wise square root is not a matrix square root"
    elif np.isclose(got, np.sqrt(max(mean_term, 0)) + np.trace(s_1 + s_2) - 2 * trace_term, rtol=1e-6):
        hint = "the mean term is the squared distance ||mu_1 - mu_2||^2, not the distance"
    else:
        return ""
    return f"\nhint: {hint}"


# --------------------------------------------------------------------------- the stable (symmetric) form

class _SqrtmSwitchedOff(RuntimeError):
    pass


def _no_sqrtm(*args, **kwargs):
    raise _SqrtmSwitchedOff("scipy.linalg.sqrtm is switched off during this check: the exercise asks for the "
                            "symmetric eigenvalue form. Build sigma_1^(1/2) from np.linalg.eigh(sigma_1), then take "
                            "the eigenvalues of sigma_1^(1/2) sigma_2 sigma_1^(1/2) with np.linalg.eigvalsh")


def _stable_hint(got, mu_1, s_1, mu_2, s_2) -> str:
    """The usual slips of the eigenvalue form, recomputed."""
    mean_term = ((mu_1 - mu_2) ** 2).sum() + np.trace(s_1) + np.trace(s_2)
    w, v = np.linalg.eigh(s_1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root @ s_2 @ root
    eig_middle = np.linalg.eigvalsh((middle + middle.T) / 2)
    candidates = [
        (mean_term - 2 * np.clip(eig_middle, 0, None).sum(),
         "you summed the eigenvalues of sigma_1^(1/2) sigma_2 sigma_1^(1/2); the trace of its square root is the "
         "sum of their square roots"),
        (mean_term - 2 * np.sqrt(np.clip(np.linalg.eigvalsh(s_1 @ s_2), 0, None)).sum(),
         "np.linalg.eigvalsh assumes a symmetric matrix and reads only one triangle; sigma_1 sigma_2 is not "
         "symmetric. Take the eigenvalues of the symmetric sigma_1^(1/2) sigma_2 sigma_1^(1/2) instead"),
        (mean_term - 2 * np.sqrt(np.clip(np.linalg.eigvalsh(np.sqrt(np.abs(s_1)) @ s_2 @ np.sqrt(np.abs(s_1))),
                                         0, None)).sum(),
         "np.sqrt(sigma_1) is an element-wise square root, not the matrix square root: build it from the "
         "eigendecomposition, V diag(sqrt(w)) V^T with w, V = np.linalg.eigh(sigma_1)"),
        (mean_term - np.sqrt(np.clip(eig_middle, 0, None)).sum(),
         "the cross term is -2 Tr((sigma_1 sigma_2)^(1/2)): the factor 2 is missing"),
    ]
    for candidate, hint in candidates:
        if np.isclose(got, candidate, rtol=1e-6, atol=1e-8):
            return f"\nhint: {hint}"
    return _frechet_hint(got, mu_1, s_1, mu_2, s_2)


def check_stable_frechet_distance(student_fn) -> None:
    """Check ``stable_frechet_distance(mu_1, sigma_1, mu_2, sigma_2) -> float``, the Fréchet distance through the
    symmetric form Tr((S_1 S_2)^(1/2)) = Tr((S_1^(1/2) S_2 S_1^(1/2))^(1/2)), with scipy's sqrtm switched off.

    Compared with fid.frechet_distance on random Gaussians (D = 1 to 64), identical statistics, equal covariances and
    singular covariances (N < D), where rounding makes eigenvalues slightly negative.
    """
    from unittest import mock

    name = "stable_frechet_distance"
    rng = np.random.default_rng(2)
    cases = _frechet_cases(rng)
    case, mu_1, s_1, mu_2, s_2 = _rank_deficient_case(rng)
    cases.append(("the same, with the singular covariance second", mu_2, s_2, mu_1, s_1))
    for case, mu_1, s_1, mu_2, s_2 in cases:
        with mock.patch.object(scipy.linalg, "sqrtm", _no_sqrtm):
            try:
                got = call_student(name, student_fn, case, mu_1.copy(), s_1.copy(), mu_2.copy(), s_2.copy())
            except ExerciseFailed as failure:
                if "did not converge" in failure.message or "LinAlgError" in failure.message:
                    raise ExerciseFailed(name, failure.message + "\nhint: a NaN reached an eigensolver: the square "
                                               "root of a slightly negative eigenvalue. Rounding makes the smallest "
                                               "eigenvalues of a singular covariance about -1e-16; clip them at 0 "
                                               "(np.clip(w, 0, None)) before np.sqrt") from None
                raise
        if isinstance(got, (np.ndarray, torch.Tensor)) and np.size(got) == 1:
            got = got.item()
        if isinstance(got, complex) or np.iscomplexobj(got):
            raise ExerciseFailed(name, f"the distance is complex ({complex(got):.6g}): the symmetric form has real "
                                       f"eigenvalues (np.linalg.eigvalsh); keep real numbers\nwhile checking: {case}")
        if not isinstance(got, (float, int, np.floating)):
            raise ExerciseFailed(name, f"return one number, got {type(got).__name__}\nwhile checking: {case}")
        if not np.isfinite(got):
            raise ExerciseFailed(name, f"the distance is {got}\nhint: the square root of a negative eigenvalue is NaN; "
                                       "rounding makes the smallest eigenvalues of a singular covariance slightly "
                                       f"negative: clip them at 0 (np.clip(w, 0, None))\nwhile checking: {case}")
        expected = fid.frechet_distance(mu_1, s_1, mu_2, s_2)
        if not np.isclose(got, expected, rtol=1e-6, atol=1e-8):
            raise ExerciseFailed(name, f"got {float(got):.10g}, expected {expected:.10g} (difference "
                                       f"{abs(float(got) - expected):.3g})\nwhile checking: {case}"
                                       + _stable_hint(got, mu_1, s_1, mu_2, s_2))
    passed(name, len(cases), "D = 1 to 64, identical statistics, equal covariances, singular covariances "
                             "(N = 20 samples in D = 32), without sqrtm")
