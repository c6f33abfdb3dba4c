"""Score-SDE samplers (notebook 05): sample quality against the number of score evaluations (NFE).

    python benchmarks/sde_samplers.py [--mode fast|full] [--skip-digits] [--skip-mixture]

Part 1, the 2D Gaussian mixture: energy distance to fresh samples of the exact mixture, with the exact score
and with the shipped toy eps-model (load_toy("gaussian_mixture")), n points per run (fast 2,000, full 5,000);
the real-vs-real floor (mean of 5 draws) is printed beside it. Part 2, the digits UNet (class-conditional, no guidance) scored
with course.fid at the mode's sample count (fast 200, full 1,000). Samplers: Euler-Maruyama on the reverse SDE,
the probability-flow ODE with Euler and Heun, predictor-corrector (EM + one Langevin step, snr 0.16) and
scipy's solve_ivp (RK45) at a few tolerances. Rows are saved as they finish.
"""
import argparse
import time

import torch

from common import print_table, save
from course import datasets, fid, metrics, models, sde
from course.schedules import linear_schedule

SETTINGS = {
    "fast": {"mixture_n": 2000,
             "mixture": {"em": [5, 10, 20, 50, 100, 1000], "euler": [3, 5, 10, 20, 50], "heun": [2, 3, 5, 10, 20],
                         "pc": [5, 10, 20, 50, 100], "ivp": [1e-1, 1e-2, 1e-3, 1e-5]},
             "digits": {"em": [20, 100], "euler": [20], "heun": [10, 20], "pc": [20], "ivp": [1e-2]}},
    "full": {"mixture_n": 5000,
             "mixture": {"em": [5, 10, 20, 50, 100, 200, 1000], "euler": [3, 5, 10, 20, 50, 100],
                         "heun": [2, 3, 5, 10, 20, 50], "pc": [5, 10, 20, 50, 100, 200],
                         "ivp": [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]},
             "digits": {"em": [10, 20, 50, 100, 1000], "euler": [10, 20, 50], "heun": [5, 10, 20, 50],
                        "pc": [10, 20, 50], "ivp": [1e-1, 1e-2, 1e-3]}},
}


def run_sampler(name: str, setting, score, vp, shape, seed: int = 0):
    """Returns (x_0, nfe). ``setting`` is the number of steps, or the tolerance for solve_ivp."""
    if name == "em":
        x, info = sde.euler_maruyama_sample(score, vp, shape, setting, seed=seed, progress=False)
    elif name in ("euler", "heun"):
        x, info = sde.ode_sample(score, vp, shape, setting, name, seed=seed, progress=False)
    elif name == "pc":
        x, info = sde.pc_sample(score, vp, shape, setting, corrector_steps=1, snr=0.16, seed=seed, progress=False)
    elif name == "ivp":
        x, info = sde.solve_ivp_sample(score, vp, shape, rtol=setting, atol=setting, seed=seed)
    else:
        raise ValueError(name)
    return x, info["nfe"]


LABELS = {"em": "Euler-Maruyama (SDE)", "euler": "PF-ODE Euler", "heun": "PF-ODE Heun",
          "pc": "PC (EM + Langevin)", "ivp": "PF-ODE solve_ivp RK45"}


def mixture_rows(settings: dict, n: int) -> list[dict]:
    vp = sde.VPSDE.from_schedule(linear_schedule())
    mixture = datasets.GaussianMixture2D()
    reference, _ = mixture.sample(n, seed=101)
    # the real-vs-real floor: fresh exact samples against the reference, averaged over 5 draws (it fluctuates)
    floor = sum(metrics.energy_distance(mixture.sample(n, seed=102 + i)[0], reference) for i in range(5)) / 5
    scores = {"exact": sde.mixture_score(mixture, vp),
              "learned": sde.eps_model_score(models.load_toy("gaussian_mixture"), vp)}
    rows = []
    for score_name, score in scores.items():
        for name, values in settings.items():
            for value in values:
                start = time.perf_counter()
                x, nfe = run_sampler(name, value, score, vp, (n, 2))
                rows.append({"score": score_name, "sampler": LABELS[name],
                             "steps" if name != "ivp" else "rtol": value, "nfe": nfe,
                             "energy_distance": round(metrics.energy_distance(x, reference), 5),
                             "floor": round(floor, 5), "seconds": round(time.perf_counter() - start, 2)})
                print(rows[-1], flush=True)
    return rows


def digits_rows(settings: dict, mode: str, name_suffix: str) -> list[dict]:
    vp = sde.VPSDE.from_schedule(linear_schedule())
    unet = models.load_digits_unet()
    rows = []
    for name, values in settings.items():
        for value in values:
            nfe_box = {}

            def sample(labels, seed):
                eps_model = lambda x, t: unet(x, t, class_labels=labels).sample  # noqa: E731
                x, nfe_box["nfe"] = run_sampler(name, value, sde.eps_model_score(eps_model, vp), vp,
                                                (len(labels), 1, 16, 16), seed)
                return x.clamp(-1, 1)

            start = time.perf_counter()
            with torch.no_grad():
                report = fid.score_sampler(sample, mode=mode, seed=0)
            rows.append({"sampler": LABELS[name], "steps" if name != "ivp" else "rtol": value,
                         "nfe": nfe_box["nfe"], "n": report["n"], "fid": round(report["fid"], 2),
                         "fid_floor": round(report["fid_floor"], 2),
                         "class_accuracy": round(report["class_accuracy"], 4),
                         "diversity": round(report["diversity"], 2), "seconds": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
            save(f"sde_samplers_digits_{name_suffix}", rows)
    return rows


def _table(rows, key_name="steps"):
    """Rows with 'steps' or 'rtol' in one column, for print_table."""
    out = []
    for row in rows:
        row = dict(row)
        setting = row.pop("steps", None)
        rtol = row.pop("rtol", None)
        out.append({"sampler": row.pop("sampler"), "steps / rtol": setting if setting is not None else f"rtol {rtol:g}",
                    **row})
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="fast", choices=list(SETTINGS))
    parser.add_argument("--skip-mixture", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    args = parser.parse_args()
    settings = SETTINGS[args.mode]
    torch.manual_seed(0)
    if not args.skip_mixture:
        start = time.perf_counter()
        rows = mixture_rows(settings["mixture"], settings["mixture_n"])
        save(f"sde_samplers_mixture_{args.mode}", rows)
        print_table(_table(rows), f"2D mixture: energy distance against NFE ({args.mode}, n = {settings['mixture_n']}; "
                                  f"{time.perf_counter() - start:.0f} s)")
    if not args.skip_digits:
        start = time.perf_counter()
        rows = digits_rows(settings["digits"], args.mode, args.mode)
        print_table(_table(rows), f"digits UNet: FID against NFE ({args.mode} mode, n = {rows[0]['n']}; "
                                  f"{time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
