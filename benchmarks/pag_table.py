"""PAG's tables in miniature (notebook 07): unconditional FID against the PAG scale s, the perturbation strategies,
the choice of layers and of timesteps, PAG + CFG, and the widget's latency.

    python benchmarks/pag_table.py [--mode fast|full] [--sections sweep strategies layers timesteps cfg widget]

The shipped digits UNet with the null label (the unconditional model), DDIM with eta = 0 and 20 steps, the same
seeded x_T for every row. Unconditional rows are scored without labels; "class_tv" is the total-variation distance
between the classifier's histogram of predicted digits and the uniform one (0 = every digit equally often), which
shows when guidance changes *which* digits are drawn. PAG + CFG rows are class-conditional and report class accuracy.
Rows are saved as they finish; a run of some --sections keeps the other sections' saved rows.
"""
import argparse
import json
import statistics
import time

import torch

from common import RESULTS, print_table, save
from course import fid, models, pag, widgets

ALL = tuple(pag.LAYERS)
DEFAULTS = dict(layers=pag.DEFAULT_LAYERS, strategy="identity", t_range=None, w=None)
SECTIONS = {
    "sweep": [dict(s=s) for s in (0, 0.5, 1, 2, 3, 5)],
    "strategies": [dict(s=1, strategy=k) for k in pag.STRATEGIES],
    "layers": [dict(s=1, layers=(name,)) for name in pag.LAYERS] + [dict(s=1, layers=ALL), dict(s=3, layers=ALL)],
    "timesteps": [dict(s=1, t_range=(500, 999)), dict(s=1, t_range=(0, 499)), dict(s=3, t_range=(500, 999))],
    "cfg": [dict(s=0, w=1.0), dict(s=1, w=1.0), dict(s=0, w=2.0), dict(s=1, w=2.0)],
}


def score(unet, network, mode, s, layers=pag.DEFAULT_LAYERS, strategy="identity", t_range=None, w=None):
    n = fid.SAMPLE_COUNTS[mode]
    labels = torch.arange(10).repeat(n // 10)
    start = time.perf_counter()
    samples = pag.pag_sampler(s, layers, steps=20, strategy=strategy, w=w, unet=unet, t_range=t_range,
                              progress=True)(labels, 0)
    report = fid.evaluate(samples, labels if w is not None else None, seed=0, network=network)
    with torch.no_grad():
        predicted = network(samples).argmax(1)
    histogram = torch.bincount(predicted, minlength=10).double() / n
    row = {"s": s, "layers": "+".join(layers) if s else "-", "strategy": strategy if s else "-",
           "t_range": f"{t_range[0]}-{t_range[1]}" if t_range and s else "all",
           "w": "uncond" if w is None else w, "n": n, "fid": round(report["fid"], 2),
           "fid_floor": round(report["fid_floor"], 2), "diversity": round(report["diversity"], 2),
           "sharpness": round(pag.gradient_magnitude(samples).mean().item(), 4),
           "confidence": round(pag.classifier_confidence(samples).mean().item(), 4),
           "class_tv": round(0.5 * (histogram - 0.1).abs().sum().item(), 3)}
    if w is not None:
        row["class_accuracy"] = round(report["class_accuracy"], 4)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def widget_latency(unet, moves: int = 12) -> dict:
    """Seconds per new (s, layers) setting of notebook 07's PAGExplorer (8 samples, 10 DDIM steps; nothing precomputed)."""
    explorer = widgets.PAGExplorer(unet, precompute=False)
    settings = [(s, name) for name in ("mid", "all three") for s in (0.5, 1.0, 2.0, 3.0, 5.0, 1.5)][:moves]
    for s, name in settings:
        explorer.layers.value = name
        explorer.scale.value = s
    cached = time.perf_counter()
    explorer.scale.value = 1.0  # a setting seen before: served from the cache
    cached = time.perf_counter() - cached
    return {"moves": len(explorer.latencies), "median_s": round(statistics.median(explorer.latencies), 3),
            "max_s": round(max(explorer.latencies), 3), "cached_move_s": round(cached, 4),
            "threads": torch.get_num_threads()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="fast", choices=list(fid.SAMPLE_COUNTS))
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS) + ["widget"],
                        choices=list(SECTIONS) + ["widget"])
    args = parser.parse_args()
    unet, network = models.load_digits_unet(), fid.feature_network()
    rows, done = [], {}
    saved = RESULTS / f"pag_table_{args.mode}.json"
    if saved.exists():  # keep the sections this run does not redo
        rows = [r for r in json.loads(saved.read_text())["rows"] if r["section"] not in args.sections]
    for section in args.sections:
        if section == "widget":
            continue
        for config in SECTIONS[section]:
            key = repr(sorted({**DEFAULTS, **config}.items()))  # the same row in two sections is scored once
            if key not in done:
                done[key] = score(unet, network, args.mode, **config)
            rows.append({"section": section, **done[key]})
            print(rows[-1], flush=True)
            save(f"pag_table_{args.mode}", rows)
    for section in dict.fromkeys(r["section"] for r in rows if r["section"] != "widget"):
        part = [{k: v for k, v in r.items() if k != "section"} for r in rows if r["section"] == section]
        print_table(part, f"PAG, {section} ({args.mode} mode, n = {part[0]['n']}; DDIM 20 steps, eta = 0)")
    if "widget" in args.sections:
        latency = widget_latency(unet)
        print_table([latency], "PAG widget: seconds per new setting (8 samples, 10 DDIM steps, two passes)")
        rows = [r for r in rows if r["section"] != "widget"] + [{"section": "widget", **latency}]
        save(f"pag_table_{args.mode}", rows)


if __name__ == "__main__":
    main()
