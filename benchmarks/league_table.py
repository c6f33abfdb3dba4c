"""The league table of notebook 11: every sampler of the workbook scored by the FID harness, one row each.

    python benchmarks/league_table.py [--mode fast|full] [--only TEXT ...]

Later notebooks add their samplers to SAMPLERS. --only rescores the rows whose name contains TEXT and keeps the
other rows of the saved table as they are (the 1000-step DDPM row takes about 11 minutes). Each row: FID against the held-out digits, the real-vs-real floor
at the same n, class accuracy (by the feature network) and diversity.
"""
import argparse
import json
import time

import torch

from common import RESULTS, save
from course import ddpm, fid, models, results
from course.schedules import linear_schedule
from ddim_table import ddim_sampler
from flow_table import sampler as flow_table_sampler


def ddpm_1000(labels, seed):
    unet = models.load_digits_unet()
    samples, _ = ddpm.ddpm_sample(lambda x, t: unet(x, t, class_labels=labels).sample, linear_schedule(),
                                      (len(labels), 1, 16, 16), seed=seed)
    return samples.clamp(-1, 1)


def ddim(steps: int, eta: float = 0.0):
    def sample(labels, seed):
        return ddim_sampler(models.load_digits_unet(), steps, eta)(labels, seed)
    return sample


def flow_matching(steps: int, method: str = "flow_euler"):
    def sample(labels, seed):
        nfe = steps if method == "flow_euler" else 2 * steps
        return flow_table_sampler(method, nfe, models.load_digits_flow(), None)(labels, seed)
    return sample


def unconditional(sample_fn):
    """Mark a sampler that ignores the labels: it is scored without class accuracy."""
    sample_fn.unconditional = True
    return sample_fn


def guided(name: str, *args, **kwargs):
    def sample(labels, seed):
        from course import guidance, pag

        return {"cfg": guidance.cfg_sampler, "classifier": guidance.classifier_guided_sampler,
                "pag": pag.pag_sampler}[name](*args, **kwargs)(labels, seed)
    return unconditional(sample) if name == "pag" and kwargs.get("w") is None else sample


def score(sampler, mode: str) -> dict:
    if not getattr(sampler, "unconditional", False):
        return fid.score_sampler(sampler, mode=mode, seed=0)
    samples = sampler(torch.arange(10).repeat(fid.SAMPLE_COUNTS[mode] // 10), 0)
    return {"mode": mode, **fid.evaluate(samples, None, seed=0)}


SAMPLERS = {
    "real training digits (reference)": fid.real_digit_sampler,
    "DDPM, 1000 steps, no guidance (nb 03)": ddpm_1000,
    "DDIM, 10 steps, eta 0 (nb 04)": ddim(10),
    "DDIM, 20 steps, eta 0 (nb 04)": ddim(20),
    "CFG w = 1, DDIM 20 steps (nb 06)": guided("cfg", 1.0, steps=20),
    "classifier guidance w = 2, DDIM 20 (nb 06)": guided("classifier", 2.0, steps=20),
    "unconditional, DDIM 20 steps (nb 07)": guided("pag", 0.0, steps=20),
    "PAG s = 1 at mid, unconditional (nb 07)": guided("pag", 1.0, steps=20),
    "flow matching, Euler 4 steps (nb 12)": flow_matching(4),
    "flow matching, Euler 20 steps (nb 12)": flow_matching(20),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="fast", choices=list(fid.SAMPLE_COUNTS))
    parser.add_argument("--only", nargs="+", help="rescore only the samplers whose name contains one of these texts")
    args = parser.parse_args()
    results_name = "league_table" if args.mode == "fast" else "league_table_full"
    saved = {}
    if args.only and (RESULTS / f"{results_name}.json").exists():
        saved = {row["sampler"]: row for row in json.loads((RESULTS / f"{results_name}.json").read_text())["rows"]}
    rows = []
    for sampler_name, sampler in SAMPLERS.items():
        if args.only and not any(text in sampler_name for text in args.only) and sampler_name in saved:
            rows.append(saved[sampler_name])
            continue
        start = time.perf_counter()
        report = score(sampler, args.mode)
        rows.append({"sampler": sampler_name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()},
                     "seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)
    print(results.format_league_table(rows))
    save(results_name, rows)


if __name__ == "__main__":
    main()
