"""Training recipes: small, named, seeded configs that rebuild every shipped checkpoint.

    python -m course.train RECIPE [--steps N] [--out DIR]
    python -m course.train all          # what `make checkpoints` runs

Each run shows a progress bar with the loss, saves safetensors to data/checkpoints/ and records
the recipe, seed, steps, wall time, final loss, a quality figure, the size and the sha256 in the manifest.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoints, datasets, losses, metrics, models, sampling
from .schedules import get_schedule


@dataclass
class Recipe:
    name: str
    kind: str  # "toy", "classifier", "unet" or "noisy_classifier"
    steps: int
    batch_size: int
    lr: float
    seed: int = 0
    options: dict = field(default_factory=dict)


RECIPES = {
    "toy_swiss_roll": Recipe("toy_swiss_roll", "toy", 4000, 512, 2e-3, options={"dataset": "swiss_roll"}),
    "toy_two_moons": Recipe("toy_two_moons", "toy", 4000, 512, 2e-3, options={"dataset": "two_moons"}),
    "toy_gaussian_mixture": Recipe("toy_gaussian_mixture", "toy", 4000, 512, 2e-3,
                                   options={"dataset": "gaussian_mixture"}),
    "digit_classifier": Recipe("digit_classifier", "classifier", 1500, 128, 2e-3),
    "digits_unet": Recipe("digits_unet", "unet", 3000, 128, 2e-3,
                          options={"label_dropout": 0.15, "ema": 0.999, "eval_per_class": 20}),
    "noisy_digit_classifier": Recipe("noisy_digit_classifier", "noisy_classifier", 3000, 128, 3e-3,
                                     options={"width": 24, "eval_t": [0, 250, 500, 750, 900, 999]}),
}


def _loss_bar(recipe: Recipe, steps: int):
    return tqdm(range(steps), desc=recipe.name, mininterval=2, file=sys.stdout)


def fit_toy(model: torch.nn.Module, data: torch.Tensor, schedule, steps: int, batch_size: int = 512,
            lr: float = 2e-3, seed: int = 0, desc: str = "training") -> list[float]:
    """Train eps_theta on 2D points with L_simple (Algorithm 1); returns the loss of every step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    bar = tqdm(range(steps), desc=desc, mininterval=1, file=sys.stdout)
    for _ in bar:
        batch = data[torch.randint(0, len(data), (batch_size,), generator=gen)]
        loss = losses.random_l_simple(model, schedule, batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return history


def train_toy(recipe: Recipe, steps: int):
    torch.manual_seed(recipe.seed)
    data, _ = datasets.toy_2d(recipe.options["dataset"], n=10_000, seed=recipe.seed)
    model, schedule = models.TimeMLP(), get_schedule("linear")
    history = fit_toy(model, data, schedule, steps, recipe.batch_size, recipe.lr, recipe.seed, desc=recipe.name)
    loss = torch.tensor(history[-1])
    held_out, _ = datasets.toy_2d(recipe.options["dataset"], n=1000, seed=recipe.seed + 1)
    samples, _ = sampling.ddpm_sample(model, schedule, (1000, 2), seed=recipe.seed, progress=False)
    quality = {"energy_distance_to_held_out": round(metrics.energy_distance(samples, held_out), 5)}
    return model, loss.item(), quality


def train_classifier(recipe: Recipe, steps: int):
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    images, labels = datasets.digits("train")
    model = models.DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    bar = _loss_bar(recipe, steps)
    for step in bar:
        idx = torch.randint(0, len(images), (recipe.batch_size,), generator=gen)
        shift = torch.randint(-1, 2, (2,), generator=gen).tolist()  # small shifts: robust to imperfect samples
        batch = torch.roll(images[idx], shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(model(batch), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    model.eval()
    test_images, test_labels = datasets.digits("test")
    with torch.no_grad():
        accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
    return model, loss.item(), {"test_accuracy": round(accuracy, 4), **fid_floors(model)}


def fid_floors(network) -> dict:
    """FID of real training digits against the held-out ones, at each harness sample count: FID's baseline."""
    from . import fid

    return {f"fid_floor_{mode}_n{n}": round(fid.evaluate(datasets.digits("train")[0][:n], network=network)["fid_floor"], 4)
            for mode, n in fid.SAMPLE_COUNTS.items()}


def train_unet(recipe: Recipe, steps: int):
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    images, labels = datasets.digits("train")
    model, schedule = models.build_digits_unet(), get_schedule("linear")
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.05)
    bar = _loss_bar(recipe, steps)
    for step in bar:
        idx = torch.randint(0, len(images), (recipe.batch_size,), generator=gen)
        y = labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < recipe.options["label_dropout"]] = models.NULL_LABEL
        loss = losses.random_l_simple(lambda x, t: model(x, t, class_labels=y).sample, schedule, images[idx], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(recipe.options["ema"], (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return ema, loss.item(), unet_class_accuracy(ema, recipe.options["eval_per_class"], recipe.seed)


@torch.no_grad()
def unet_class_accuracy(unet, per_class: int, seed: int = 0) -> dict:
    """Class-conditional DDPM samples (no guidance) scored by the shipped digit classifier."""
    try:
        classifier = load_classifier()
    except checkpoints.CheckpointError as err:
        return {"class_accuracy": None, "note": str(err)}
    unet.eval()
    y = torch.arange(models.NUM_DIGIT_CLASSES).repeat_interleave(per_class)
    samples, _ = sampling.ddpm_sample(lambda x, t: unet(x, t, class_labels=y).sample, get_schedule("linear"),
                                      (len(y), 1, 16, 16), seed=seed)
    accuracy = (classifier(samples.clamp(-1, 1)).argmax(1) == y).float().mean().item()
    real_accuracy = checkpoints.read_manifest()["digit_classifier"]["quality"]["test_accuracy"]
    return {"class_accuracy": round(accuracy, 4), "samples_scored": len(y),
            "real_data_accuracy": real_accuracy}


def noisy_accuracy(model, schedule, timesteps, seed: int = 0) -> dict:
    """Accuracy of p_phi(y | x_t, t) on held-out digits noised to each t (fixed, seeded noise)."""
    from . import forward

    images, labels = datasets.digits("test")
    gen = torch.Generator().manual_seed(seed)
    result = {}
    with torch.no_grad():
        for t in timesteps:
            t_batch = torch.full((len(images),), int(t), dtype=torch.long)
            x_t = forward.q_sample(schedule, images, t_batch, torch.randn(images.shape, generator=gen))
            result[f"test_accuracy_t{t}"] = round((model(x_t, t_batch).argmax(1) == labels).float().mean().item(), 4)
    return result


def train_noisy_classifier(recipe: Recipe, steps: int):
    """Cross-entropy on x_t = q_sample(x_0, t, eps) with t uniform in [0, T): a classifier for classifier guidance."""
    from . import forward

    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    images, labels = datasets.digits("train")
    schedule = get_schedule("linear")
    model = models.NoisyDigitClassifier(width=recipe.options["width"])
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    bar = _loss_bar(recipe, steps)
    for step in bar:
        idx = torch.randint(0, len(images), (recipe.batch_size,), generator=gen)
        shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
        x_0 = torch.roll(images[idx], shifts=shift, dims=(2, 3))
        t = torch.randint(0, schedule.T, (recipe.batch_size,), generator=gen)
        x_t = forward.q_sample(schedule, x_0, t, torch.randn(x_0.shape, generator=gen))
        loss = F.cross_entropy(model(x_t, t), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    model.eval()
    return model, loss.item(), noisy_accuracy(model, schedule, recipe.options["eval_t"], recipe.seed)


TRAINERS = {"toy": train_toy, "classifier": train_classifier, "unet": train_unet,
            "noisy_classifier": train_noisy_classifier}


def run(name: str, steps: int | None = None, out: Path | None = None) -> dict:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; the recipes are: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    steps = steps or recipe.steps
    start = time.perf_counter()
    model, final_loss, quality = TRAINERS[recipe.kind](recipe, steps)
    wall = time.perf_counter() - start
    record = {"recipe": asdict(recipe), "seed": recipe.seed, "steps": steps, "wall_time_s": round(wall, 1),
              "final_loss": round(final_loss, 5), "quality": quality,
              "parameters": sum(p.numel() for p in model.parameters()),
              "config": getattr(model, "config", None) and dict(model.config), "torch": torch.__version__,
              "threads": torch.get_num_threads()}
    entry = checkpoints.save_checkpoint(model, name, record, out or checkpoints.CHECKPOINT_DIR)
    print(f"{name}: {steps} steps in {wall:.0f} s, final loss {final_loss:.4f}, quality {quality}, "
          f"{entry['size_bytes'] / 1e6:.2f} MB, sha256 {entry['sha256'][:12]}")
    return entry


# --------------------------------------------------------------------------- loading

def load_classifier(directory: Path | None = None) -> models.DigitClassifier:
    state, entry = checkpoints.load_state("digit_classifier", directory or checkpoints.CHECKPOINT_DIR)
    model = models.DigitClassifier(**entry["config"])
    model.load_state_dict(state)
    return model.eval()


def load_digits_unet(directory: Path | None = None):
    state, entry = checkpoints.load_state("digits_unet", directory or checkpoints.CHECKPOINT_DIR)
    model = models.build_digits_unet()
    model.load_state_dict(state)
    return model.eval()


def load_noisy_classifier(directory: Path | None = None) -> models.NoisyDigitClassifier:
    """The shipped time-dependent classifier p_phi(y | x_t, t) of notebook 06 (sha256-verified)."""
    state, entry = checkpoints.load_state("noisy_digit_classifier", directory or checkpoints.CHECKPOINT_DIR)
    model = models.NoisyDigitClassifier(**entry["config"])
    model.load_state_dict(state)
    return model.eval()


def load_toy(dataset: str, directory: Path | None = None) -> models.TimeMLP:
    state, entry = checkpoints.load_state(f"toy_{dataset}", directory or checkpoints.CHECKPOINT_DIR)
    model = models.TimeMLP(**entry["config"])
    model.load_state_dict(state)
    return model.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course.train", description="Train a recipe into a checkpoint.")
    parser.add_argument("recipe", help=f"one of: {', '.join(RECIPES)}, or 'all'")
    parser.add_argument("--steps", type=int, help="override the recipe's number of steps (for a quick test)")
    parser.add_argument("--out", type=Path, help="directory for the checkpoint and manifest")
    args = parser.parse_args(argv)
    names = list(RECIPES) if args.recipe == "all" else [args.recipe]
    try:
        for name in names:
            run(name, args.steps, args.out)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
