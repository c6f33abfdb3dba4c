"""The league table of notebook 11: every sampler of the workbook scored by the FID harness, one row each.

    python benchmarks/league_table.py [--mode fast|full]

Later notebooks add their samplers to SAMPLERS. Each row: FID against the held-out digits, the real-vs-real floor
at the same n, class accuracy (by the feature network) and diversity.
"""
import argparse
import time

import torch

from common import RESULTS, print_table, save
from course import fid, sampling, train
from course.schedules import linear_schedule


def ddpm_1000(labels, seed):
    unet = train.load_digits_unet()
    samples, _ = sampling.ddpm_sample(lambda x, t: unet(x, t, class_labels=labels).sample, linear_schedule(),
                                      (len(labels), 1, 16, 16), seed=seed)
    return samples.clamp(-1, 1)


SAMPLERS = {
    "real training digits (reference)": fid.real_digit_sampler,
    "DDPM, 1000 steps, no guidance (nb 03)": ddpm_1000,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="fast", choices=list(fid.SAMPLE_COUNTS))
    args = parser.parse_args()
    rows = []
    for name, sampler in SAMPLERS.items():
        start = time.perf_counter()
        report = fid.score_sampler(sampler, mode=args.mode, seed=0)
        rows.append({"sampler": name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()},
                     "seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)
    print(fid.format_league_table(rows))
    save("league_table" if args.mode == "fast" else "league_table_full", rows)


if __name__ == "__main__":
    main()
