"""The workbook's Fréchet distance against scipy.linalg.sqrtm: time and agreement at D = 64 and 512."""
import statistics
import time

import numpy as np
import scipy.linalg

from common import print_table, save
from course.fid import frechet_distance


def scipy_frechet(mu_1, s_1, mu_2, s_2):
    covmean = scipy.linalg.sqrtm(s_1 @ s_2)
    return float(((mu_1 - mu_2) ** 2).sum() + np.trace(s_1 + s_2) - 2 * np.trace(covmean).real)


def timed(fn, *args, repeats=7):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn(*args)
        times.append(time.perf_counter() - start)
    return value, statistics.median(times)


def main():
    rng = np.random.default_rng(0)
    rows = []
    for d in (64, 512):
        feats_1, feats_2 = rng.standard_normal((4 * d, d)), rng.standard_normal((4 * d, d)) * 1.1 + 0.1
        stats = (feats_1.mean(0), np.cov(feats_1, rowvar=False), feats_2.mean(0), np.cov(feats_2, rowvar=False))
        ours, t_ours = timed(frechet_distance, *stats)
        theirs, t_scipy = timed(scipy_frechet, *stats)
        rows.append({"D": d, "ours_ms": 1000 * t_ours, "scipy_sqrtm_ms": 1000 * t_scipy,
                     "speedup": t_scipy / t_ours, "relative_difference": abs(ours - theirs) / abs(theirs)})
    print_table(rows, "Fréchet distance: median of 7 runs")
    save("fid_speed", rows)


if __name__ == "__main__":
    main()
