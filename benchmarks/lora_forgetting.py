"""Notebook 10's forgetting test, DreamBooth-style: bind a new concept to an unused label, then measure what
happens to the classes fine-tuning never showed, for LoRA at each rank and for full fine-tuning, with and
without DreamBooth's prior-preservation loss.

    python benchmarks/lora_forgetting.py [--ranks 1 4 8] [--full-lrs 1e-5 3e-5 1e-4] [--steps 150]

The base: the shipped digits UNet with one more class label, course.lora.IDENTIFIER_LABEL (11; a random, never
trained embedding: the rare identifier "[V]"), course.lora.with_identifier. The instance set: 5 framed training
digits (course.lora.framed: a one-pixel white frame) of each of the classes 3, 5 and 8, all labelled 11
(course.lora.concept_digits). Every row fine-tunes a fresh copy with the same loop (course.lora.fine_tune: L_simple,
AdamW, batch 16, seed 0, no label dropout: the null label is not what is tested), LoRA on
course.lora.DEFAULT_TARGETS at lr --lora-lr, full fine-tuning (every weight, the new embedding included) at each
learning rate of the sweep. "+ prior": DreamBooth's prior preservation, every step also fits 16 of 200 samples
the frozen base model drew for the digits 0-9 (20 each, noise seed 100), with weight 1.

Scored by course.lora.score_forgetting from the same noise for every row (noise seed 0): the untouched classes,
20 samples of each digit 0-9: class accuracy, FID against the held-out digits (floor: real training digits at
the same n), the frame score (does the frame leak into them; real digits about 0.15, framed 1.0), the mean
pixel change from the base model's samples; and the identifier: the frame score of 50 samples of label 11.
Memory: course.lora.optimizer_state_bytes, the AdamW state and gradients measured in bytes.
"""
import argparse
import time

import torch

from common import print_table, save
from course import fid, lora, models


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--lora-lr", type=float, default=2e-3)
    parser.add_argument("--full-lrs", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4])
    parser.add_argument("--prior-ranks", type=int, nargs="*", default=[4])
    parser.add_argument("--prior-full-lrs", type=float, nargs="*", default=[1e-4])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--classes", type=int, nargs="+", default=[3, 5, 8])
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--prior-per-class", type=int, default=20)
    parser.add_argument("--score-per-class", type=int, default=20)
    parser.add_argument("--identifier-n", type=int, default=50)
    parser.add_argument("--name", default="lora_forgetting")
    args = parser.parse_args()
    torch.set_num_threads(1)
    network = fid.feature_network()
    base = lora.with_identifier(models.load_digits_unet().requires_grad_(False))
    images, labels, shown = lora.concept_digits(args.classes, args.per_class)
    prior_labels = torch.arange(10).repeat_interleave(args.prior_per_class)
    prior_images = lora.sample_digits(base, prior_labels, seed=100)
    settings = {"settings": {**vars(args), "instance_images": len(images), "instance_digits": shown.tolist(),
                             "prior_images": len(prior_images), "threads": torch.get_num_threads()}}

    def score(model):
        return lora.score_forgetting(model, base_samples, per_class=args.score_per_class,
                                     identifier_n=args.identifier_n, network=network)

    def row(method, r, lr, prior, fit, report, memory):
        return {"method": method, "r": r, "lr": lr, "prior": prior,
                "trainable": fit["trainable"] if fit else 0,
                "optimizer_state_bytes": memory["optimizer_state_bytes"] if memory else 0,
                "gradient_bytes": memory["gradient_bytes"] if memory else 0,
                "train_s": round(fit["seconds"], 1) if fit else 0.0,
                "final_loss": round(sum(fit["losses"][-50:]) / len(fit["losses"][-50:]), 4) if fit else None,
                "identifier_frame": round(report["identifier_frame_score"], 3),
                "class_acc": round(report["class_accuracy"], 4), "fid": round(report["fid"], 1),
                "fid_floor": round(report["fid_floor"], 1), "leak_frame": round(report["leak_frame_score"], 3),
                "pixel_change": round(report.get("pixel_change", 0.0), 4)}

    base_samples = None
    first = score(base)
    base_samples = first["samples"]
    rows = [row("base (before)", "-", None, False, None, first, None)]
    print(rows[-1], flush=True)
    runs = [(f"LoRA r={r}", r, args.lora_lr, False) for r in args.ranks]
    runs += [(f"full, lr {lr:g}", "-", lr, False) for lr in args.full_lrs]
    runs += [(f"LoRA r={r} + prior", r, args.lora_lr, True) for r in args.prior_ranks]
    runs += [(f"full, lr {lr:g} + prior", "-", lr, True) for lr in args.prior_full_lrs]
    # the rows with and without the prior first (the figures are saved after each row), the rest of the sweep after
    first = {(r, lr) for r in args.prior_ranks for lr in [args.lora_lr]} | {("-", lr) for lr in args.prior_full_lrs}
    runs.sort(key=lambda run: 0 if (run[1], run[2]) in first else 1)
    for method, r, lr, prior in runs:
        model = lora.full_copy(base) if r == "-" else lora.lora_copy(base, r)
        memory = lora.optimizer_state_bytes(model)
        fit = lora.fine_tune(model, images, labels, steps=args.steps, batch_size=args.batch_size, lr=lr,
                             label_dropout=0.0, desc=method, prior=(prior_images, prior_labels) if prior else None)
        rows.append(row(method, r, lr, prior, fit, score(model), memory))
        print(rows[-1], flush=True)
        save(args.name, rows + [settings])
    print_table(rows, f"forgetting: {len(images)} framed digits {args.classes} bound to label "
                      f"{lora.IDENTIFIER_LABEL}, {args.steps} steps at batch {args.batch_size}; the ten untouched "
                      f"digits scored on {10 * args.score_per_class} samples")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")
