"""DDIM's table in miniature (notebook 04): sample quality against the number of steps, for eta = 0, 0.5 and 1.

    python benchmarks/ddim_table.py [--mode fast|full] [--steps 10 20 50 100 1000] [--etas 0 0.5 1] [--append]

The shipped DDPM-trained digits UNet, class-conditional without guidance, the same seeded labels and x_T for
every row. 1000 steps with eta = 1 on the trailing sub-sequence is exactly DDPM's Algorithm 2. Rows are saved as
they finish, so a long full run can be read while it goes on; --append adds rows (say a new eta) to the saved file.
"""
import argparse
import time

from common import print_table, save
from course import ddim, fid, models, results
from course.schedules import linear_schedule


def ddim_sampler(unet, steps: int, eta: float):
    """fn(labels, seed) -> digits in [-1, 1], for course.fid.score_sampler."""
    schedule = linear_schedule()

    def sample(labels, seed):
        x, _ = ddim.ddim_sample(lambda x, t: unet(x, t, class_labels=labels).sample, schedule,
                                    (len(labels), 1, 16, 16),
                                    steps=steps, eta=eta, seed=seed, progress=True)
        return x.clamp(-1, 1)
    return sample


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="fast", choices=list(fid.SAMPLE_COUNTS))
    parser.add_argument("--steps", type=int, nargs="+", default=[3, 5, 10, 20, 50, 100],
                        help="add 1000 for DDPM itself (eta = 1): about 11 minutes per 200 samples on 2 cores")
    parser.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--append", action="store_true", help="keep the saved rows, replacing those run again")
    parser.add_argument("--name", help="results file name (default ddim_table_MODE)")
    args = parser.parse_args()
    name = args.name or f"ddim_table_{args.mode}"
    unet = models.load_digits_unet()
    rerun = {(s, e) for s in args.steps for e in args.etas}
    rows = [r for r in results.rows(name) if (r["steps"], r["eta"]) not in rerun] if args.append else []
    for steps in args.steps:
        for eta in args.etas:
            start = time.perf_counter()
            report = fid.score_sampler(ddim_sampler(unet, steps, eta), mode=args.mode, seed=0)
            rows.append({"steps": steps, "eta": eta, "n": report["n"], "fid": round(report["fid"], 2),
                         "fid_floor": round(report["fid_floor"], 2), "class_accuracy": round(report["class_accuracy"], 4),
                         "diversity": round(report["diversity"], 2), "seconds": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
            save(name, sorted(rows, key=lambda r: (r["steps"], r["eta"])))
    print_table(rows, f"DDIM: quality against steps ({args.mode} mode, n = {rows[0]['n']}); "
                      f"1000 steps with eta = 1 is DDPM")


if __name__ == "__main__":
    main()
