"""course.results: seed means and the best row against the baseline, as notebooks 06 and 07 read the tables."""
import pytest

from course import results

ROWS = [{"w": 0, "seed": 0, "fid": 150.0, "class_accuracy": 0.98, "fid_floor_mean": 92.0, "fid_floor_sd": 12.0, "n": 500},
        {"w": 0, "seed": 1, "fid": 160.0, "class_accuracy": 0.96, "fid_floor_mean": 92.0, "fid_floor_sd": 12.0, "n": 500},
        {"w": 0.3, "seed": 0, "fid": 120.0, "class_accuracy": 1.0, "fid_floor_mean": 92.0, "fid_floor_sd": 12.0, "n": 500},
        {"w": 0.3, "seed": 1, "fid": 130.0, "class_accuracy": 0.98, "fid_floor_mean": 92.0, "fid_floor_sd": 12.0, "n": 500},
        {"w": 2, "seed": 0, "fid": 300.0, "class_accuracy": 1.0, "fid_floor_mean": 92.0, "fid_floor_sd": 12.0, "n": 500}]


def test_seed_means_average_over_seeds_only():
    means = results.seed_means(ROWS, "w")
    assert [m["w"] for m in means] == [0, 0.3, 2]
    assert means[0]["fid_mean"] == 155.0 and means[0]["fid_sd"] == pytest.approx(7.0711, abs=1e-4)
    assert means[0]["class_accuracy"] == pytest.approx(0.97) and means[0]["seeds"] == [0, 1]
    assert means[2]["fid_sd"] is None and means[2]["seeds"] == [0]


def test_best_against_baseline_calls_a_gain_real_only_beyond_the_floor_sd():
    best = results.best_against_baseline(results.seed_means(ROWS, "w"), "w")
    assert best["best"] == 0.3 and best["gain"] == 30.0 and best["beyond_floor_sd"]
    close = [dict(r, fid=r["fid"] + (25 if r["w"] == 0.3 else 0)) for r in ROWS]
    best = results.best_against_baseline(results.seed_means(close, "w"), "w")
    assert best["gain"] == 5.0 and not best["beyond_floor_sd"]
