"""PAG's tables (notebook 07) in two regimes: unconditional FID against the PAG scale s, the perturbation strategies,
the layers, PAG + CFG, the boundary in steps, and the widget's latency.

    python benchmarks/pag_table.py [--mode fast|full] [--sections sweep strategies layers cfg boundary widget]
                                   [--regimes few_steps converged boundary]

The shipped digits UNet with the null label (the unconditional model), DDIM with eta = 0, the same seeded x_T for
every row, perturbed self-attention (PSA) on all its self-attention layers (down.4x4, mid, up.4x4) unless a row says
otherwise. Two regimes:

- ``few_steps``: DDIM with 3 steps. The unguided unconditional samples are blobs far from the floor: structure to
  repair, the paper's situation;
- ``converged``: DDIM with 10 steps, where the unguided samples already score near the real-vs-real floor;
- ``boundary``: 2 and 5 steps at s = 0, 1, 2 (one seed).

Each row carries regime, section, steps, s, seed, n, fid, fid_floor (its own seed's floor), fid_floor_mean and
fid_floor_sd (``fid.floor_spread`` at the same n); unconditional rows are scored without labels; "class_tv" is the
total-variation distance between the classifier's histogram of predicted digits and the uniform one. PAG + CFG rows
are class-conditional and report class accuracy. Full mode: n = 500, seeds 0 and 1 (the headroom sweep; the other
rows at seed 0); fast: n = 200, seed 0. Rows are saved as they finish; a run of some --sections / --regimes keeps the
saved rows of the others, and reuses any saved row of the same setting (delete the file to recompute all).
"""
import argparse
import json
import statistics
import time

import torch

from common import RESULTS, print_table, save
from course import fid, models, pag, results, widgets

ALL = tuple(pag.LAYERS)
REGIMES = {"few_steps": 3, "converged": 10}
SCALES = (0, 0.5, 1, 2, 3, 5)
DEFAULTS = {"fast": dict(n=200, seeds=(0,)), "full": dict(n=500, seeds=(0, 1))}
# section -> [(regime, configs, seeds: "all" or "first")]: the headroom regime in full, the converged one (20 s per
# row at 3 steps, about 5 minutes at 10 steps on a shared 2-core machine) only as the contrast
SECTIONS = {
    "sweep": [("few_steps", [dict(s=s) for s in SCALES], "all"),
              ("converged", [dict(s=s) for s in (0, 0.5, 1, 2)], "first")],
    "strategies": [("few_steps", [dict(s=1, strategy=k) for k in pag.STRATEGIES], "first")],
    "layers": [("few_steps", [dict(s=1, layers=(name,)) for name in pag.LAYERS], "first")],
    "cfg": [("few_steps", [dict(s=s, w=w) for w in (1.0, 2.0) for s in (0, 1)], "first")],
    "boundary": [("boundary", [dict(steps=k, s=s) for k in (2, 5) for s in (0, 1, 2)], "first")],
}


def score(unet, network, n, seed, spread, steps, s, layers=ALL, strategy="identity", w=None):
    labels = torch.arange(10).repeat(n // 10)
    start = time.perf_counter()
    samples = pag.pag_sampler(s, layers, steps=steps, strategy=strategy, w=w, unet=unet)(labels, seed)
    report = fid.evaluate(samples, labels if w is not None else None, seed=seed, network=network)
    with torch.no_grad():
        predicted = network(samples).argmax(1)
    histogram = torch.bincount(predicted, minlength=10).double() / n
    row = {"steps": steps, "s": s, "layers": "+".join(layers) if s else "-", "strategy": strategy if s else "-",
           "w": "uncond" if w is None else w, "seed": seed, "n": n, "fid": round(report["fid"], 2),
           "fid_floor": round(report["fid_floor"], 2), "fid_floor_mean": round(spread["fid_floor_mean"], 2),
           "fid_floor_sd": round(spread["fid_floor_sd"], 2), "diversity": round(report["diversity"], 2),
           "sharpness": round(pag.gradient_magnitude(samples).mean().item(), 4),
           "confidence": round(pag.classifier_confidence(samples, network).mean().item(), 4),
           "class_tv": round(0.5 * (histogram - 0.1).abs().sum().item(), 3)}
    if w is not None:
        row["class_accuracy"] = round(report["class_accuracy"], 4)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def summary(rows: list[dict]) -> list[dict]:
    """Per regime: the sweep's lowest mean FID over seeds against s = 0, and whether it beats the floor's spread."""
    out = []
    for regime in REGIMES:
        sweep = [r for r in rows if r.get("section") == "sweep" and r["regime"] == regime]
        if not sweep or not any(r["s"] == 0 for r in sweep):
            continue
        means = results.seed_means(sweep, "s")
        best = results.best_against_baseline(means, "s")
        out.append({"regime": regime, "seeds": len(means[0]["seeds"]), "s=0 mean FID": round(best["baseline_mean"], 2),
                    "best s": best["best"], "best mean FID": round(best["best_mean"], 2), "gain": round(best["gain"], 2),
                    "floor": f"{means[0]['fid_floor_mean']:.1f} +- {means[0]['fid_floor_sd']:.1f}",
                    "gain > floor sd": best["beyond_floor_sd"]})
    return out


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


def _key(config: dict) -> str:
    """The same sampler setting in two sections (or a saved row) is scored once."""
    layers = config.get("layers", ALL)
    layers = "+".join(layers) if isinstance(layers, tuple) else layers
    s = config["s"]
    w = config.get("w")
    return repr((config["steps"], s, layers if s else "-", config.get("strategy", "identity") if s else "-",
                 "uncond" if w in (None, "uncond") else w, config["seed"]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="fast", choices=list(DEFAULTS))
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS) + ["widget"],
                        choices=list(SECTIONS) + ["widget"])
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES) + ["boundary"],
                        choices=list(REGIMES) + ["boundary"])
    parser.add_argument("--n", type=int, help="samples per row (default: 500 in full mode, 200 in fast)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 in full mode, 0 in fast")
    args = parser.parse_args()
    n, seeds = args.n or DEFAULTS[args.mode]["n"], args.seeds or DEFAULTS[args.mode]["seeds"]
    name = f"pag_table_{args.mode}"
    unet, network = models.load_digits_unet(), fid.feature_network()
    spread = fid.floor_spread(n, network=network)
    print(f"real-vs-real floor at n = {n}: {spread['fid_floor_mean']:.2f} +- {spread['fid_floor_sd']:.2f} "
          f"over {spread['seeds']} seeds", flush=True)
    rows, done = [], {}
    saved = RESULTS / f"{name}.json"
    if saved.exists():  # keep the sections this run does not redo (rows of the current layout only)
        every = [r for r in json.loads(saved.read_text())["rows"] if "regime" in r]
        redone = {(section, regime) for section in args.sections for regime, _, _ in SECTIONS.get(section, [])
                  if regime in args.regimes}
        rows = [r for r in json.loads(saved.read_text())["rows"]
                if (r["section"], r.get("regime")) not in redone and ("regime" in r or r["section"] == "widget")
                and not (r["section"] == "widget" and "widget" in args.sections)]
        done = {_key(r): {k: v for k, v in r.items() if k not in ("regime", "section")} for r in every}
    for section in args.sections:
        if section == "widget":
            continue
        for regime, configs, which in SECTIONS[section]:
            if regime not in args.regimes:
                continue
            for seed in (seeds if which == "all" else seeds[:1]):
                for config in configs:
                    config = {"steps": REGIMES.get(regime), **config}
                    key = _key({"layers": ALL, "strategy": "identity", "w": None, "seed": seed, **config})
                    if key not in done:  # the same row in two sections is scored once
                        done[key] = score(unet, network, n, seed, spread, **config)
                    rows.append({"regime": regime, "section": section, **done[key]})
                    print(rows[-1], flush=True)
                    save(name, rows)
    shown = [r for r in rows if r["section"] != "widget"]
    for section in dict.fromkeys(r["section"] for r in shown):
        part = [{k: v for k, v in r.items() if k not in ("section", "fid_floor_mean", "fid_floor_sd")}
                for r in shown if r["section"] == section]
        print_table(part, f"PAG, {section} ({args.mode} mode, n = {n}; floor {spread['fid_floor_mean']:.2f} +- "
                          f"{spread['fid_floor_sd']:.2f}; DDIM eta = 0)")
    if summary(rows):
        print_table(summary(rows), "PAG: lowest mean FID over seeds against s = 0, per regime (sweep)")
    if "widget" in args.sections:
        latency = widget_latency(unet)
        print_table([latency], "PAG widget: seconds per new setting (8 samples, 10 DDIM steps, two passes)")
        rows = [r for r in rows if r["section"] != "widget"] + [{"section": "widget", **latency}]
        save(name, rows)


if __name__ == "__main__":
    main()
