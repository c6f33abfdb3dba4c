"""Notebook 09's zero-convolution ablation where the paper's point can show: little paired data, the first few
hundred steps, several seeds; and the quality of the samples beside their adherence over the conditioning scale.

    python benchmarks/controlnet_ablation.py [--pairs 64] [--seeds 0 1 2] [--steps 150] [--no-scale] [--name ...]
    python benchmarks/controlnet_ablation.py --pairs 1500 --name controlnet_ablation_1500   # all the data

Curve (table "curve"): for each seed and each initialisation (zero convolutions, or ordinary random 1x1
convolutions and a random last embedding layer: ``ControlNet(zero_init=False)``), a ControlNet is trained by
course.controlnet.train_controlnet (batch --batch-size = 32, lr 1e-3, AdamW) on ``--pairs`` (mask, digit) pairs drawn from the
training split with that seed (the same pairs for both initialisations). At each of ``--marks`` steps it is scored
on the first ``--masks`` held-out masks: IoU of null-label samples (DDIM ``--sample-steps`` steps, seed 0, the
same noise for every row), the damage to the base model |eps_controlled - eps_base| / |eps_base| on those held-out
digits at random t (course.controlnet.distance_from_base) and how far the trainable copy's weights have drifted
from the pretrained ones (course.controlnet.copy_drift), with the mean training loss since the last mark.

Quality (table "scale", skipped with --no-scale): the shipped ControlNet, null label, every held-out mask, DDIM 20
steps: IoU, and course.fid.evaluate's class accuracy (does the classifier read the sample as the mask's digit) and
FID against the held-out digits, for each conditioning scale.
"""
import argparse
import time

import torch

from common import print_table, save
from course import controlnet as cn
from course import datasets, fid, results
from course.metrics import mask_iou
from course.models import NULL_LABEL, load_digits_unet


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=64, help="training pairs (1500 = all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--marks", type=int, nargs="+", default=[0, 10, 25, 50, 100, 150])
    parser.add_argument("--masks", type=int, default=48, help="held-out masks scored at each mark")
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--no-scale", action="store_true", help="skip the quality-against-scale table")
    parser.add_argument("--name", default="controlnet_ablation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    unet = load_digits_unet()
    images, labels = datasets.digits("test")
    masks = cn.digit_masks(images)
    null = torch.full_like(labels, NULL_LABEL)
    marks = sorted(m for m in set(args.marks) if m <= args.steps)
    settings = {"settings": {**vars(args), "threads": torch.get_num_threads()}}
    rows = []
    if args.no_scale:  # keep the scale table of an earlier run of the same name
        rows = [r for r in results.rows(args.name) if r.get("table") == "scale"]
    else:
        network = fid.feature_network()
        shipped = cn.load_digits_controlnet()
        for s in args.scales:
            start = time.perf_counter()
            samples = cn.sample_with_control(unet, shipped, masks, null, scale=s, steps=20, seed=0)
            report = fid.evaluate(samples, labels, network=network)
            rows.append({"table": "scale", "scale": s, "masks": len(masks),
                         "iou": round(mask_iou(cn.digit_masks(samples), masks).mean().item(), 4),
                         "class_accuracy": round(report["class_accuracy"], 4), "fid": round(report["fid"], 1),
                         "fid_floor": round(report["fid_floor"], 1), "diversity": round(report["diversity"], 2),
                         "seconds": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
        print_table([{k: v for k, v in r.items() if k != "table"} for r in rows],
                    "the shipped ControlNet (null label, 297 held-out masks, DDIM 20 steps): adherence and quality "
                    "against the conditioning scale")
        save(args.name, rows + [settings])

    eval_masks, eval_null = masks[:args.masks], null[:args.masks]
    for seed in args.seeds:
        for init, zero_init in [("zero", True), ("random", False)]:
            curve = []

            def score_step(step, model):
                if step in marks:
                    curve.append({"table": "curve", "pairs": args.pairs, "init": init, "seed": seed, "step": step,
                                  "iou": round(cn.adherence(unet, model, eval_masks, eval_null,
                                                            steps=args.sample_steps)["iou"], 4),
                                  "distance_from_base": round(cn.distance_from_base(unet, model, n=args.masks), 5),
                                  "copy_drift": round(cn.copy_drift(unet, model), 6)})
                    print(curve[-1], flush=True)

            start = time.perf_counter()
            _, losses = cn.train_controlnet(unet, args.steps, args.batch_size, args.lr, zero_init=zero_init,
                                            seed=seed, callback=score_step, pairs=args.pairs)
            previous = 0
            for row in curve:
                window = losses[previous:row["step"]]
                row["mean_loss_since_last_mark"] = round(sum(window) / len(window), 5) if window else None
                previous = row["step"]
            rows += curve
            print(f"seed {seed}, {init} init: {args.steps} steps and scoring in {time.perf_counter() - start:.0f} s",
                  flush=True)
            save(args.name, rows + [settings])
    print_table([{k: v for k, v in r.items() if k != "table"} for r in rows if r["table"] == "curve"],
                f"the first {args.steps} steps on {args.pairs} pairs ({args.masks} held-out masks, null label, DDIM "
                f"{args.sample_steps} steps)")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")
