"""LoRA rank against full fine-tuning on a new stroke style (notebook 10's closing table).

    python benchmarks/lora_table.py [--mode fast|full] [--ranks 1 2 4 8] [--steps 200] [--batch-size 16]

The shipped digits UNet is fine-tuned on bold digits (course.lora.bold_digits("train", per_class=20): 200 images
the base model never saw) with the same loop (course.lora.fine_tune: L_simple, AdamW, seeded) for every row:
LoRA at each rank on the attention projections and the time-embedding projections (course.lora.DEFAULT_TARGETS),
LoRA on the attention projections only (one rank, to show where the adapter sits matters), and full fine-tuning.

Each row: trainable parameters, wall time of the fine-tuning (1 thread unless OMP_NUM_THREADS says otherwise),
and the harness course.lora.score_adaptation on one class-balanced set of samples (DDIM, 10 steps, eta = 0;
n from course.fid.SAMPLE_COUNTS): quality on the new data = FID against the held-out bold digits (beside the
floor: real bold training digits at the same n); forgetting = course.fid.evaluate's FID and class accuracy
against the original digits (the base model's row is "before"). Rows are saved as they finish.
"""
import argparse
import time

import torch

from common import print_table, save
from course import fid, lora, models


def row(name: str, r, fit: dict | None, report: dict, base_params: int) -> dict:
    return {"model": name, "r": r, "trainable": fit["trainable"] if fit else 0,
            "trainable_pct": round(100 * fit["trainable"] / base_params, 3) if fit else 0.0,
            "adapter_kb": round(4 * fit["trainable"] / 1024, 1) if fit else 0.0,
            "train_s": round(fit["seconds"], 1) if fit else 0.0,
            "final_loss": round(sum(fit["losses"][-50:]) / len(fit["losses"][-50:]), 4) if fit else None,
            "n": report["n"], "new_fid": round(report["new_fid"], 1), "new_floor": round(report["new_fid_floor"], 1),
            "old_fid": round(report["old_fid"], 1), "old_floor": round(report["old_fid_floor"], 1),
            "class_acc": round(report["class_accuracy"], 3), "diversity": round(report["diversity"], 2)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="fast", choices=list(fid.SAMPLE_COUNTS))
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--attention-only-rank", type=int, default=4, help="0 to skip that row")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--lora-lr", type=float, default=2e-3)
    parser.add_argument("--full-lr", type=float, default=2e-4)
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--name", help="results file name (default lora_table_MODE)")
    args = parser.parse_args()
    name = args.name or f"lora_table_{args.mode}"
    n = fid.SAMPLE_COUNTS[args.mode]
    base, network = models.load_digits_unet(), fid.feature_network()
    images, labels = lora.bold_digits("train", per_class=args.per_class)
    base_params = lora.count_parameters(base)["total"]
    bold_test, bold_test_labels = lora.bold_digits("test")
    with torch.no_grad():
        classifier_on_bold = (network(bold_test).argmax(1) == bold_test_labels).float().mean().item()
    print(f"{len(images)} bold training digits; the classifier reads {classifier_on_bold:.1%} of the held-out bold "
          f"digits right (the ceiling for class accuracy on bold samples)")

    def score(model):
        return lora.score_adaptation(model, n=n, steps=args.sample_steps, network=network, progress=True)

    def fit(model, lr, desc):
        return lora.fine_tune(model, images, labels, steps=args.steps, batch_size=args.batch_size, lr=lr, desc=desc)

    rows = [row("base (before)", "-", None, score(base), base_params)]
    print(rows[-1], flush=True)
    runs = [(f"LoRA r={r}", r, lora.DEFAULT_TARGETS) for r in args.ranks]
    if args.attention_only_rank:
        runs.append((f"LoRA r={args.attention_only_rank}, attention only", args.attention_only_rank,
                     lora.ATTENTION_TARGETS))
    for label, r, targets in runs:
        model = lora.lora_copy(base, r, targets=targets)
        result = fit(model, args.lora_lr, label)
        rows.append(row(label, r, result, score(model), base_params))
        print(rows[-1], flush=True)
        save(name, rows)
    model = lora.full_copy(base)
    result = fit(model, args.full_lr, "full fine-tuning")
    rows.append(row("full fine-tuning", "-", result, score(model), base_params))
    save(name, rows + [{"settings": {**vars(args), "train_images": len(images), "base_parameters": base_params,
                                     "classifier_on_bold_test": round(classifier_on_bold, 4),
                                     "threads": torch.get_num_threads()}}])
    print_table(rows, f"LoRA rank against full fine-tuning on bold digits ({args.mode} mode, n = {n}, "
                      f"{args.steps} steps at batch {args.batch_size}, LoRA lr {args.lora_lr:g}, "
                      f"full lr {args.full_lr:g}, {torch.get_num_threads()} thread(s))")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")
