"""DDPM's own miniature (notebook 03): L_simple against the lambda_t-weighted bound, on the 2D Gaussian mixture.

    python benchmarks/ddpm_weighting.py

Two TimeMLPs, same seed and data, same steps: one trained with L_simple (every t weighted 1), one with the
bound's weights lambda_t (sigma_t^2 = beta_t, divided by their mean so both losses have the same scale). Each is
scored by its variational bound on held-out points (against the mixture's entropy, the lowest a bound can be)
and by its samples: energy distance to held-out data and mean log-density under the true mixture. The rows keep
300 samples of each model for the notebook's scatter plot.
"""
import time

import torch

from common import print_table, save
from course import datasets, ddpm, fitting, forward, metrics, models
from course.schedules import linear_schedule

STEPS, BATCH, LR, SEED = 3000, 256, 1e-2, 0


def weighted_loss(model, schedule, x_0, weights, gen):
    """Mean of w_t ||eps - eps_theta(x_t, t)||^2 with t uniform: L_simple for w = 1, the bound's shape for lambda_t."""
    t = torch.randint(0, schedule.T, (len(x_0),), generator=gen)
    eps = torch.randn(x_0.shape, generator=gen)
    error = (eps - model(forward.q_sample(schedule, x_0, t, eps), t)).pow(2).sum(1)
    return (weights[t] * error).mean()


def main():
    torch.set_num_threads(1)
    schedule = linear_schedule()
    mixture = datasets.GaussianMixture2D()
    data, _ = mixture.sample(10_000, seed=SEED)
    held_out, _ = mixture.sample(1000, seed=SEED + 1)
    x_eval, _ = mixture.sample(300, seed=3)  # the notebook's points for the bound
    lam = ddpm.vlb_weights(schedule, "beta")
    lam[0] = lam[1]  # code t = 0 is L_0; give it the neighbouring weight
    weightings = {"L_simple (lambda_t = 1)": torch.ones(schedule.T),
                  "bound's lambda_t (sigma^2 = beta)": (lam / lam.mean()).float()}
    entropy = (-mixture.log_prob(x_eval).mean()).item()
    rows = []
    for name, weights in weightings.items():
        torch.manual_seed(SEED)
        model, gen = models.TimeMLP(), torch.Generator().manual_seed(SEED)
        start = time.perf_counter()
        fitting.fit(model.parameters(), lambda step: weighted_loss(
            model, schedule, data[torch.randint(0, len(data), (BATCH,), generator=gen)], weights, gen),
            STEPS, LR, optimizer="adam", lr_schedule="cosine", desc=name)
        seconds = time.perf_counter() - start
        bound = ddpm.variational_bound(model, schedule, x_eval, variance="beta")
        samples, _ = ddpm.ddpm_sample(model, schedule, (1000, 2), seed=SEED, progress=False)
        rows.append({"loss": name, "steps": STEPS, "train_s": round(seconds, 1),
                     "bound": round(bound["total"].mean().item(), 4),
                     "sum_kl": round(bound["kl"].sum(0).mean().item(), 4),
                     "kl_t_below_50": round(bound["kl"][:49].sum(0).mean().item(), 4),
                     "entropy": round(entropy, 4),
                     "energy_distance": round(metrics.energy_distance(samples, held_out), 5),
                     "sample_log_density": round(mixture.log_prob(samples).mean().item(), 4),
                     "real_log_density": round(mixture.log_prob(held_out).mean().item(), 4),
                     "samples": [[round(v, 3) for v in point] for point in samples[:300].tolist()]})
    print_table([{k: v for k, v in row.items() if k != "samples"} for row in rows], "L_simple against the weighted bound")
    save("ddpm_weighting", rows)


if __name__ == "__main__":
    main()
