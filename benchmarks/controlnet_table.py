"""Notebook 09's tables: how well samples follow the condition mask, with and without zero convolutions.

    python benchmarks/controlnet_table.py [--n 297] [--steps 20] [--scales 0 0.5 1 1.5]

Adherence: every held-out digit's mask (datasets.digits("test"), 297 masks the ControlNets never saw) gets one DDIM
sample (eta = 0, seed 0: the same noise in every row), and course.controlnet.iou scores the sample's ink
(pixel > 0) against the mask. Rows: the frozen base model with the null label and with the true label (it knows
the digit, not the shape), the shipped ControlNet (recipe digits_controlnet) with the null and the true label, and
the ablation without zero convolutions (recipe digits_controlnet_no_zero, same data and budget).
Distance from base: |eps_controlled - eps_base| / |eps_base| on held-out digits at random t, for an untrained
ControlNet (step 0) of each kind, and for the trained ones.
IoU against the conditioning scale s for the shipped ControlNet (null label). Widget latency: the seconds
ControlNetExplorer (8 samples, DDIM 10 steps) takes for each new (condition, scale), median and max.
Early training (--curve-steps, 0 to skip): both kinds trained again from step 0 by the recipe's loop
(course.controlnet.train_controlnet, batch 64, lr 1e-3, seed 0), scored at each of --curve-marks steps on the same
held-out masks (null label, DDIM --curve-sample-steps steps) and by the distance from the base model, with the
mean training loss over each stretch.
"""
import argparse
import statistics
import time

import torch

from common import print_table, save
from course import datasets, widgets
from course import controlnet as cn
from course.models import NULL_LABEL, load_digits_unet


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=297, help="held-out masks scored (297 = all)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps per sample")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5])
    parser.add_argument("--curve-steps", type=int, default=200, help="training steps of the early-training curve")
    parser.add_argument("--curve-marks", type=int, nargs="+", default=[0, 10, 25, 50, 100, 200])
    parser.add_argument("--curve-sample-steps", type=int, default=10)
    parser.add_argument("--name", default="controlnet_table")
    args = parser.parse_args()
    unet = load_digits_unet()
    controlnets = {"ControlNet": cn.load_digits_controlnet(),
                   "no zero convs": cn.load_digits_controlnet("digits_controlnet_no_zero")}
    images, labels = datasets.digits("test")
    images, labels = images[:args.n], labels[:args.n]
    masks, null = cn.digit_masks(images), torch.full_like(labels, NULL_LABEL)

    def score(model, y, scale=1.0):
        start = time.perf_counter()
        result = cn.adherence(unet, model, masks, y, scale=scale, steps=args.steps)
        per_mask = result["iou_per_sample"]
        return {"iou": round(per_mask.mean().item(), 4), "iou_sem": round((per_mask.std() / len(per_mask) ** 0.5).item(), 4),
                "iou_median": round(per_mask.median().item(), 4), "seconds": round(time.perf_counter() - start, 1)}

    adherence_rows = []
    for name, model in [("base", None), *controlnets.items()]:
        for label_name, y in [("null", null), ("true", labels)]:
            adherence_rows.append({"table": "adherence", "model": name, "label": label_name, "masks": len(masks),
                                   **score(model, y)})
            print(adherence_rows[-1], flush=True)
    print_table([{k: v for k, v in r.items() if k != "table"} for r in adherence_rows],
                f"IoU between held-out masks and the samples drawn for them (DDIM {args.steps} steps, seed 0)")

    distance_rows = []
    for name, zero_init in [("ControlNet", True), ("no zero convs", False)]:
        torch.manual_seed(0)  # the recipes build their ControlNet after the same seed
        distance_rows.append({"table": "distance", "model": name,
                              "at_step_0": round(cn.distance_from_base(unet, cn.ControlNet(unet, zero_init=zero_init),
                                                                       n=len(images)), 5),
                              "after_training": round(cn.distance_from_base(unet, controlnets[name], n=len(images)), 5)})
    print_table([{k: v for k, v in r.items() if k != "table"} for r in distance_rows],
                f"|eps_controlled - eps_base| / |eps_base| on {len(images)} held-out digits at random t")

    scale_rows = [{"table": "scale", "model": "ControlNet", "label": "null", "scale": s, **score(controlnets["ControlNet"], null, s)}
                  for s in args.scales]
    print_table([{k: v for k, v in r.items() if k != "table"} for r in scale_rows], "IoU against the conditioning scale")

    conditions = {f"digit {i}": cn.digit_masks(images[i:i + 1]) for i in range(3)}
    conditions.update({kind: cn.parametric_mask(kind) for kind in ("ring", "bar", "cross", "blob")})
    explorer = widgets.ControlNetExplorer(unet, controlnets["ControlNet"], conditions, n=8, steps=10)
    for name in list(conditions)[1:]:
        explorer.picker.value = name
    for s in (0.5, 1.5, 0.0):
        explorer.slider.value = s
    drawn = len(explorer.latencies)
    start = time.perf_counter()
    explorer.slider.value = 1.0  # (blob, 1.0) and then (digit 0, 1.0): both drawn before, so from the cache
    explorer.picker.value = list(conditions)[0]
    cached = (time.perf_counter() - start) / 2
    assert len(explorer.latencies) == drawn
    latency_rows = [{"table": "widget", "settings_drawn": len(explorer.latencies),
                     "median_s": round(statistics.median(explorer.latencies), 3),
                     "max_s": round(max(explorer.latencies), 3), "cached_s": round(cached, 4)}]
    print_table([{k: v for k, v in r.items() if k != "table"} for r in latency_rows],
                "ControlNetExplorer: seconds per new setting (8 samples, DDIM 10 steps), and per cached one")
    rows = adherence_rows + distance_rows + scale_rows + latency_rows
    save(args.name, rows + [{"settings": {**vars(args), "threads": torch.get_num_threads()}}])

    curve_rows = []
    if args.curve_steps:
        marks = sorted(m for m in set(args.curve_marks) if m <= args.curve_steps)
        for name, zero_init in [("ControlNet", True), ("no zero convs", False)]:
            def score_step(step, model):
                if step in marks:
                    result = cn.adherence(unet, model, masks, null, steps=args.curve_sample_steps)
                    curve_rows.append({"table": "curve", "model": name, "step": step,
                                       "iou": round(result["iou"], 4),
                                       "distance_from_base": round(cn.distance_from_base(unet, model, n=len(images)), 5)})
                    print(curve_rows[-1], flush=True)

            start = time.perf_counter()
            _, losses = cn.train_controlnet(unet, args.curve_steps, zero_init=zero_init, callback=score_step)
            previous = 0
            for row in (r for r in curve_rows if r["model"] == name):
                window = losses[previous:row["step"]]
                row["mean_loss_since_last_mark"] = round(sum(window) / len(window), 5) if window else None
                previous = row["step"]
            print(f"{name}: {args.curve_steps} steps and scoring in {time.perf_counter() - start:.0f} s")
        print_table([{k: v for k, v in r.items() if k != "table"} for r in curve_rows],
                    f"early training, the same budget for both (held-out masks, null label, DDIM "
                    f"{args.curve_sample_steps} steps)")
    save(args.name, rows + curve_rows + [{"settings": {**vars(args), "threads": torch.get_num_threads()}}])


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")
