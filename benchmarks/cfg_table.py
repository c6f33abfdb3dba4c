"""The CFG trade-off in miniature (notebook 06), classifier guidance beside it, and the guidance widget's latency.

    python benchmarks/cfg_table.py [--mode fast|full] [--w 0 0.1 0.3 0.5 1 2 3 5 8] [--steps 10]
                                   [--classifier-w 0 1 2 4 8] [--no-latency]

Each row: the shipped digits UNet sampled with DDIM (eta = 0, ``--steps`` trailing steps) from the same seeded x_T
and class-balanced labels, scored by course.fid.score_sampler (n from fid.SAMPLE_COUNTS), plus the within-class
diversity (course.guidance.within_class_diversity) that guidance trades away. CFG rows guide the conditional
model with the null label; classifier-guidance rows guide the unconditional model (null label) with the noisy
classifier's gradient. Rows are saved as they finish.

The latency part builds the notebook's GuidanceExplorer (8 samples, 10 steps) and moves its controls as a
presenter would: each new slider value, class or negative class is one sampling run plus a PNG.
"""
import argparse
import json
import statistics
import time

import torch

from common import RESULTS, print_table, save
from course import fid, guidance, models, widgets


def row(kind: str, w: float, report: dict, seconds: float) -> dict:
    return {"guidance": kind, "w": w, "lambda": 1 + w if kind == "cfg" else None, "n": report["n"],
            "fid": round(report["fid"], 2), "fid_floor": round(report["fid_floor"], 2),
            "class_accuracy": round(report["class_accuracy"], 4), "diversity": round(report["diversity"], 2),
            "real_diversity": round(report["real_diversity"], 2),
            "within_class_diversity": round(report["within_class_diversity"], 2),
            "real_within_class_diversity": round(report["real_within_class_diversity"], 2),
            "seconds": round(seconds, 1)}


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
    parser.add_argument("--mode", default="fast", choices=list(fid.SAMPLE_COUNTS))
    parser.add_argument("--w", type=float, nargs="+", default=[0, 0.1, 0.3, 0.5, 1, 2, 3, 5, 8])
    parser.add_argument("--classifier-w", type=float, nargs="*", default=[0, 1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--latency-only", action="store_true",
                        help="re-measure only the widget's latency and keep the saved table (for an idle machine)")
    parser.add_argument("--name", help="results file name (default cfg_table_MODE)")
    args = parser.parse_args()
    name = args.name or f"cfg_table_{args.mode}"
    unet, network = models.load_digits_unet(), fid.feature_network()
    if args.latency_only:
        saved = json.loads((RESULTS / f"{name}.json").read_text())["rows"]
        latency = widget_latency(unet)
        print_table([latency], "GuidanceExplorer: seconds per control move that needs new samples")
        save(name, [r for r in saved if "widget_latency" not in r] + [{"widget_latency": latency}])
        return
    rows = []
    for w in args.w:
        start = time.perf_counter()
        report = guidance.score_guidance(guidance.cfg_sampler(w, steps=args.steps, unet=unet, progress=True),
                                         args.mode, network=network)
        rows.append(row("cfg", w, report, time.perf_counter() - start))
        print(rows[-1], flush=True)
        save(name, rows)
    if args.classifier_w:
        noisy = models.load_noisy_classifier()
        for w in args.classifier_w:
            start = time.perf_counter()
            sample = guidance.classifier_guided_sampler(w, steps=args.steps, classifier=noisy, unet=unet,
                                                        progress=True)
            report = guidance.score_guidance(sample, args.mode, network=network)
            rows.append(row("classifier", w, report, time.perf_counter() - start))
            print(rows[-1], flush=True)
            save(name, rows)
    print_table([{k: v for k, v in r.items() if k not in ("real_diversity", "real_within_class_diversity")}
                 for r in rows],
                f"Guidance against w ({args.mode} mode, n = {rows[0]['n']}, DDIM {args.steps} steps, eta = 0); "
                f"real data: diversity {rows[0]['real_diversity']}, "
                f"within-class {rows[0]['real_within_class_diversity']}")
    if not args.no_latency:
        latency = widget_latency(unet)
        print_table([latency], "GuidanceExplorer: seconds per control move that needs new samples")
        save(name, rows + [{"widget_latency": latency}])


if __name__ == "__main__":
    main()
