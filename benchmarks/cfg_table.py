"""CFG against w in two regimes (notebook 06), classifier guidance beside it, and the guidance widget's latency.

    python benchmarks/cfg_table.py [--mode fast|full] [--regimes few_steps converged boundary] [--seeds 0 1]
                                   [--n 500] [--w ...] [--classifier-w 0 1 2 4 8] [--no-latency]

Two regimes of the same shipped digits UNet (DDIM, eta = 0, trailing steps, the same seeded x_T and
class-balanced labels for every w):

- ``few_steps``: DDIM with 2 steps. The conditional model alone (w = 0) draws blurred, half-formed digits: there is
  something for guidance to fix, as for the paper's models;
- ``converged``: DDIM with 10 steps, where the conditional model already scores near the real-vs-real floor;
- ``boundary``: 1, 3 and 5 steps at w = 0 and 0.3 (one seed), to show where the gain appears and vanishes.

Each row carries regime, steps, w, seed, n, fid, the floor of its own seed (fid_floor) and the floor's spread at the
same n (fid_floor_mean, fid_floor_sd over fid.FLOOR_SEEDS seeds, ``fid.floor_spread``), class_accuracy, pooled and
within-class diversity. A difference of FIDs is real only beyond fid_floor_sd. Classifier-guidance rows (the
unconditional model guided by the noisy classifier) are in the converged regime. Full mode: n = 500, seeds 0 and 1;
fast: n = 200, seed 0. Rows are saved as they finish; a run of some --regimes keeps the saved rows of the others
(and the saved classifier rows when it is given no --classifier-w).

The latency part builds the notebook's GuidanceExplorer (8 samples, 10 steps) and moves its controls as a
presenter would: each new slider value, class or negative class is one sampling run plus a PNG.
"""
import argparse
import json
import statistics
import time

import torch

from common import RESULTS, print_table, save
from course import fid, guidance, models, results, widgets

REGIMES = {"few_steps": 2, "converged": 10}
BOUNDARY_STEPS, BOUNDARY_W = (1, 3, 5), (0, 0.3)
DEFAULT_W = (0, 0.1, 0.2, 0.3, 0.5, 1, 2, 4)
DEFAULTS = {"fast": dict(n=200, seeds=(0,)), "full": dict(n=500, seeds=(0, 1))}


def score(sample_fn, kind: str, regime: str, steps: int, w: float, seed: int, n: int, spread: dict,
          network) -> dict:
    labels = torch.arange(10).repeat(n // 10)
    start = time.perf_counter()
    samples = sample_fn(labels, seed)
    report = fid.evaluate(samples, labels, seed, network)
    within = guidance.within_class_diversity(samples, labels, network)
    real_within = guidance.real_within_class_diversity(labels, seed, network)
    return {"regime": regime, "steps": steps, "guidance": kind, "w": w, "lambda": 1 + w if kind == "cfg" else None,
            "seed": seed, "n": n, "fid": round(report["fid"], 2), "fid_floor": round(report["fid_floor"], 2),
            "fid_floor_mean": round(spread["fid_floor_mean"], 2), "fid_floor_sd": round(spread["fid_floor_sd"], 2),
            "class_accuracy": round(report["class_accuracy"], 4), "diversity": round(report["diversity"], 2),
            "real_diversity": round(report["real_diversity"], 2), "within_class_diversity": round(within, 2),
            "real_within_class_diversity": round(real_within, 2), "seconds": round(time.perf_counter() - start, 1)}


def summary(rows: list[dict]) -> list[dict]:
    """Per regime: the lowest mean FID over seeds against w = 0, and whether the gain exceeds the floor's spread."""
    out = []
    for regime in dict.fromkeys(r["regime"] for r in rows if r["guidance"] == "cfg" and r["regime"] != "boundary"):
        means = results.seed_means([r for r in rows if r["regime"] == regime and r["guidance"] == "cfg"], "w")
        best = results.best_against_baseline(means, "w")
        out.append({"regime": regime, "seeds": len(means[0]["seeds"]), "w=0 mean FID": round(best["baseline_mean"], 2),
                    "best w": best["best"], "best mean FID": round(best["best_mean"], 2),
                    "gain": round(best["gain"], 2), "floor": f"{means[0]['fid_floor_mean']:.1f} +- "
                                                         f"{means[0]['fid_floor_sd']:.1f}",
                    "gain > floor sd": best["beyond_floor_sd"]})
    return out


def widget_latency(unet, moves=(0.5, 1.0, 2.0, 3.0, 5.0, 8.0), classes=("7", "any digit"),
                   negatives=("3", "5")) -> dict:
    explorer = widgets.GuidanceExplorer(unet, n=8, steps=10, classifier=models.load_classifier())
    explorer.latencies.clear()
    for w in moves:  # slider moves to new values
        explorer.w.value = w
    slider = list(explorer.latencies)
    for label in classes:  # the class picker
        explorer.label.value = label
    for negative in negatives:  # the negative-class picker ("any digit except 3")
        explorer.negative.value = negative
    pickers = explorer.latencies[len(slider):]
    seen = len(explorer.samples)
    start = time.perf_counter()
    explorer.negative.value = negatives[0]  # back to a setting seen before: one control move, served from the cache
    cached = time.perf_counter() - start
    assert len(explorer.samples) == seen
    every = slider + pickers
    return {"new_settings": len(every), "median_s": round(statistics.median(every), 3), "max_s": round(max(every), 3),
            "slider_median_s": round(statistics.median(slider), 3), "slider_max_s": round(max(slider), 3),
            "picker_median_s": round(statistics.median(pickers), 3), "cached_move_s": round(cached, 4),
            "samples_per_setting": len(explorer.x_T), "steps": explorer.steps, "threads": torch.get_num_threads()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="fast", choices=list(DEFAULTS))
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES) + ["boundary"],
                        choices=list(REGIMES) + ["boundary"])
    parser.add_argument("--n", type=int, help="samples per row (default: 500 in full mode, 200 in fast)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 in full mode, 0 in fast")
    parser.add_argument("--w", type=float, nargs="+", default=list(DEFAULT_W))
    parser.add_argument("--classifier-w", type=float, nargs="*", default=[0, 1, 2, 4, 8])
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--latency-only", action="store_true",
                        help="re-measure only the widget's latency and keep the saved table (for an idle machine)")
    parser.add_argument("--name", help="results file name (default cfg_table_MODE)")
    args = parser.parse_args()
    name = args.name or f"cfg_table_{args.mode}"
    n, seeds = args.n or DEFAULTS[args.mode]["n"], args.seeds or DEFAULTS[args.mode]["seeds"]
    unet, network = models.load_digits_unet(), fid.feature_network()
    if args.latency_only:
        saved = json.loads((RESULTS / f"{name}.json").read_text())["rows"]
        latency = widget_latency(unet)
        print_table([latency], "GuidanceExplorer: seconds per control move that needs new samples")
        save(name, [r for r in saved if "widget_latency" not in r] + [{"widget_latency": latency}])
        return
    spread = fid.floor_spread(n, network=network)
    print(f"real-vs-real floor at n = {n}: {spread['fid_floor_mean']:.2f} +- {spread['fid_floor_sd']:.2f} "
          f"over {spread['seeds']} seeds {[round(f, 1) for f in spread['floors']]}", flush=True)
    rows = []
    saved = RESULTS / f"{name}.json"
    if saved.exists():  # keep the regimes this run does not redo, and saved classifier rows if it scores none
        rows = [r for r in json.loads(saved.read_text())["rows"] if "regime" in r and r["regime"] not in args.regimes
                or r.get("guidance") == "classifier" and "regime" in r and not args.classifier_w]

    def add(row):
        rows.append(row)
        print(row, flush=True)
        save(name, rows)

    for regime in [r for r in args.regimes if r in REGIMES]:
        steps = REGIMES[regime]
        for seed in seeds:
            for w in args.w:
                add(score(guidance.cfg_sampler(w, steps=steps, unet=unet), "cfg", regime, steps, w, seed, n, spread,
                          network))
        if regime == "converged" and args.classifier_w:
            noisy = models.load_noisy_classifier()
            for w in args.classifier_w:
                sample = guidance.classifier_guided_sampler(w, steps=steps, classifier=noisy, unet=unet)
                add(score(sample, "classifier", regime, steps, w, seeds[0], n, spread, network))
    if "boundary" in args.regimes:
        for steps in BOUNDARY_STEPS:
            for w in BOUNDARY_W:
                add(score(guidance.cfg_sampler(w, steps=steps, unet=unet), "cfg", "boundary", steps, w, seeds[0], n,
                          spread, network))
    shown = ("regime", "steps", "guidance", "w", "seed", "fid", "fid_floor", "class_accuracy", "diversity",
             "within_class_diversity", "seconds")
    print_table([{k: r[k] for k in shown} for r in rows],
                f"Guidance against w ({args.mode} mode, n = {n}, DDIM eta = 0); floor {spread['fid_floor_mean']:.2f} "
                f"+- {spread['fid_floor_sd']:.2f}; real within-class diversity {rows[0]['real_within_class_diversity']}")
    if summary(rows):
        print_table(summary(rows), "CFG: lowest mean FID over seeds against w = 0, per regime")
    if not args.no_latency:
        latency = widget_latency(unet)
        print_table([latency], "GuidanceExplorer: seconds per control move that needs new samples")
        save(name, rows + [{"widget_latency": latency}])


if __name__ == "__main__":
    main()
