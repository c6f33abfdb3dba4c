"""Few-step sampling, measured (notebook 12): flow Euler and Heun on the digits flow UNet against DDIM (eta = 0) on
the DDPM-trained digits UNet, at equal numbers of network evaluations.

    python benchmarks/flow_table.py [--mode fast|full] [--nfe 1 2 4 8 16 50] [--seeds 0 1]

Both UNets are the same diffusers UNet2DModel on the same digits, class-conditional without guidance, the same
seeded labels for every row. Heun costs 2 evaluations a step, so it runs NFE / 2 steps and has no NFE = 1 row.
Each row is one seed; the floor's spread (``fid.floor_spread`` at the same n) is saved beside every row, so that
``results.seed_means`` can tell a real gap from noise. Rows are saved as they finish.
"""
import argparse
import time

from common import print_table, save
from course import ddim, fid, flow, models, results
from course.schedules import linear_schedule

METHODS = ("flow_euler", "flow_heun", "ddim")


def sampler(method: str, nfe: int, flow_unet, ddpm_unet):
    """fn(labels, seed) -> digits in [-1, 1], for course.fid.score_sampler."""
    schedule = linear_schedule()

    def sample(labels, seed):
        shape = (len(labels), 1, 16, 16)
        if method == "ddim":
            x, _ = ddim.ddim_sample(lambda x, t: ddpm_unet(x, t, class_labels=labels).sample, schedule, shape,
                                    steps=nfe, seed=seed, progress=True)
        else:
            solver = method.removeprefix("flow_")
            steps = nfe if solver == "euler" else nfe // 2
            x, _ = flow.flow_sample(flow.unet_velocity(flow_unet, labels), shape, steps, solver, seed=seed,
                                    progress=True)
        return x.clamp(-1, 1)
    return sample


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="fast", choices=list(fid.SAMPLE_COUNTS))
    parser.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    name = f"flow_table_{args.mode}"
    flow_unet, ddpm_unet = models.load_digits_flow(), models.load_digits_unet()
    network = fid.feature_network()
    spread = fid.floor_spread(fid.SAMPLE_COUNTS[args.mode], network=network)
    rows = []
    for nfe in args.nfe:
        for method in args.methods:
            if method == "flow_heun" and nfe < 2:
                continue
            for seed in args.seeds:
                start = time.perf_counter()
                report = fid.score_sampler(sampler(method, nfe, flow_unet, ddpm_unet), args.mode, seed, network)
                rows.append({"method": method, "nfe": nfe, "seed": seed, "n": report["n"],
                             "fid": round(report["fid"], 2), "class_accuracy": round(report["class_accuracy"], 4),
                             "fid_floor_mean": round(spread["fid_floor_mean"], 2),
                             "fid_floor_sd": round(spread["fid_floor_sd"], 2),
                             "seconds": round(time.perf_counter() - start, 1)})
                print(rows[-1], flush=True)
                save(name, rows)
    means = [dict(m, method=method) for method in args.methods
             for m in results.seed_means([r for r in rows if r["method"] == method], by="nfe")]
    print_table([{"method": m["method"], "nfe": m["nfe"], "fid_mean": round(m["fid_mean"], 2),
                  "fid_sd": m["fid_sd"] and round(m["fid_sd"], 2), "class_accuracy": round(m["class_accuracy"], 3),
                  "floor": f"{m['fid_floor_mean']:.2f} +- {m['fid_floor_sd']:.2f}"} for m in means],
                f"Flow matching against DDIM at equal NFE ({args.mode} mode, n = {rows[0]['n']}, "
                f"mean over seeds {args.seeds})")


if __name__ == "__main__":
    main()
