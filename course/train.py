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

from . import checkpoints, controlnet as cn, datasets, ddpm, fid, fitting, flow, forward, ldm, metrics, models
from .schedules import get_schedule


@dataclass
class Recipe:
    name: str
    kind: str  # a key of TRAINERS
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
    # notebook 12: the same UNet and data, trained with the conditional flow matching loss (timestep = 1000 s),
    # for the same 3000 steps as digits_unet, so that notebook 12 compares samplers, not training budgets
    "digits_flow": Recipe("digits_flow", "flow", 3000, 128, 2e-3,
                          options={"label_dropout": 0.15, "ema": 0.999, "eval_per_class": 20, "eval_steps": 20}),
    "noisy_digit_classifier": Recipe("noisy_digit_classifier", "noisy_classifier", 3000, 128, 3e-3,
                                     options={"width": 24, "eval_t": [0, 250, 500, 750, 900, 999]}),
    # notebook 08: autoencoder -> text encoder -> latent UNet, on captioned shapes
    "shapes_classifier": Recipe("shapes_classifier", "shapes_classifier", 600, 128, 3e-3),
    "shapes_vae": Recipe("shapes_vae", "vae", 2500, 32, 2e-3, options={"kl_weight": 1e-5}),
    "shapes_vae_kl0": Recipe("shapes_vae_kl0", "vae", 1200, 32, 2e-3, options={"kl_weight": 0.0}),
    "shapes_clip": Recipe("shapes_clip", "clip", 1500, 128, 2e-3),
    "shapes_ldm": Recipe("shapes_ldm", "latent_unet", 2000, 64, 2e-3,
                         options={"caption_dropout": 0.1, "word_dropout": 0.05, "ema": 0.999, "eval_per_caption": 10,
                                  "eval_w": [0.0, 2.0]}),
    # the pixel-space twin: 260 steps cost the training FLOPs of shapes_ldm's 2000 (380.0 vs 49.3 MFLOPs a sample);
    # shapes_pixel_long gets four times that budget
    "shapes_pixel": Recipe("shapes_pixel", "latent_unet", 260, 64, 2e-3,
                           options={"caption_dropout": 0.1, "word_dropout": 0.05, "ema": 0.99, "eval_per_caption": 10,
                                    "eval_w": [0.0, 2.0], "pixel_space": True}),
    "shapes_pixel_long": Recipe("shapes_pixel_long", "latent_unet", 1040, 64, 2e-3,
                                options={"caption_dropout": 0.1, "word_dropout": 0.05, "ema": 0.995,
                                         "eval_per_caption": 10, "eval_w": [0.0, 2.0], "pixel_space": True}),
    # notebook 09: a ControlNet on the frozen digits UNet, and the ablation without zero convolutions
    "digits_controlnet": Recipe("digits_controlnet", "controlnet", 1500, 64, 1e-3,
                                options={"zero_init": True, "eval_masks": 297}),
    "digits_controlnet_no_zero": Recipe("digits_controlnet_no_zero", "controlnet", 1500, 64, 1e-3,
                                        options={"zero_init": False, "eval_masks": 297}),
}

SHAPES_TRAIN = dict(n=4000, seed=0)  # the training shapes; held-out shapes use seed 1


def _fit(recipe: Recipe, steps: int, parameters, batch_loss: Callable, **options) -> float:
    """A recipe's run of ``fitting.fit`` (its lr, name on the bar, printed to stdout); returns the last loss."""
    return fitting.fit(parameters, batch_loss, steps, recipe.lr, desc=recipe.name, mininterval=2, **options)[-1]


def fit_toy(model: torch.nn.Module, data: torch.Tensor, schedule, steps: int, batch_size: int = 512,
            lr: float = 2e-3, seed: int = 0, desc: str = "training", lr_schedule: str | None = None) -> list[float]:
    """Train eps_theta on 2D points with L_simple (Algorithm 1); returns the loss of every step.

    ``lr_schedule="cosine"`` decays the learning rate to 0 over the run (fitting.fit): a large rate early, then
    small steps that resolve the fine structure at small t, where a constant rate keeps the weights jittering.
    """
    gen = torch.Generator().manual_seed(seed)

    def batch_loss(step):
        return ddpm.random_l_simple(model, schedule, data[torch.randint(0, len(data), (batch_size,), generator=gen)], gen)

    return fitting.fit(model.parameters(), batch_loss, steps, lr, optimizer="adam", lr_schedule=lr_schedule, desc=desc)


def fit_flow_toy(model: torch.nn.Module, data: torch.Tensor, steps: int, batch_size: int = 512, lr: float = 2e-3,
                 seed: int = 0, noise: torch.Tensor | None = None, desc: str = "flow matching",
                 lr_schedule: str | None = "cosine") -> list[float]:
    """Train a velocity model v_theta(x_s, 1000 s) on 2D points with the CFM loss; returns the loss of every step.

    With ``noise`` (paired with ``data`` row by row: reflow) each point keeps its own eps instead of a fresh draw.
    """
    gen = torch.Generator().manual_seed(seed)
    velocity = flow.mlp_velocity(model)

    def batch_loss(step):
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        return flow.random_cfm_loss(lambda x, s: velocity(x, s), data[idx], gen,
                                    eps=None if noise is None else noise[idx])

    return fitting.fit(model.parameters(), batch_loss, steps, lr, optimizer="adam", lr_schedule=lr_schedule, desc=desc)


def train_toy(recipe: Recipe, steps: int):
    torch.manual_seed(recipe.seed)
    data, _ = datasets.toy_2d(recipe.options["dataset"], n=10_000, seed=recipe.seed)
    model, schedule = models.TimeMLP(), get_schedule("linear")
    history = fit_toy(model, data, schedule, steps, recipe.batch_size, recipe.lr, recipe.seed, desc=recipe.name)
    loss = torch.tensor(history[-1])
    held_out, _ = datasets.toy_2d(recipe.options["dataset"], n=1000, seed=recipe.seed + 1)
    samples, _ = ddpm.ddpm_sample(model, schedule, (1000, 2), seed=recipe.seed, progress=False)
    quality = {"energy_distance_to_held_out": round(metrics.energy_distance(samples, held_out), 5)}
    return model, loss.item(), quality


def train_classifier(recipe: Recipe, steps: int):
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    images, labels = datasets.digits("train")
    model = models.DigitClassifier()

    def batch_loss(step):
        idx = torch.randint(0, len(images), (recipe.batch_size,), generator=gen)
        shift = torch.randint(-1, 2, (2,), generator=gen).tolist()  # small shifts: robust to imperfect samples
        batch = torch.roll(images[idx], shifts=shift, dims=(2, 3))
        return F.cross_entropy(model(batch), labels[idx])

    final_loss = _fit(recipe, steps, model.parameters(), batch_loss, optimizer="adam")
    model.eval()
    test_images, test_labels = datasets.digits("test")
    with torch.no_grad():
        accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
    return model, final_loss, {"test_accuracy": round(accuracy, 4), **fid_floors(model)}


def fid_floors(network) -> dict:
    """FID of real training digits against the held-out ones, at each harness sample count: FID's baseline."""
    return {f"fid_floor_{mode}_n{n}": round(fid.evaluate(datasets.digits("train")[0][:n], network=network)["fid_floor"], 4)
            for mode, n in fid.SAMPLE_COUNTS.items()}


def train_unet(recipe: Recipe, steps: int):
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    images, labels = datasets.digits("train")
    model, schedule = models.build_digits_unet(), get_schedule("linear")
    ema = copy.deepcopy(model).requires_grad_(False)

    def batch_loss(step):
        idx = torch.randint(0, len(images), (recipe.batch_size,), generator=gen)
        y = labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < recipe.options["label_dropout"]] = models.NULL_LABEL
        return ddpm.random_l_simple(lambda x, t: model(x, t, class_labels=y).sample, schedule, images[idx], gen)

    final_loss = _fit(recipe, steps, model.parameters(), batch_loss, lr_schedule="onecycle",
                      after_step=lambda step: fitting.ema_update(ema, model, fitting.ema_decay(step, recipe.options["ema"])))
    return ema, final_loss, unet_class_accuracy(ema, recipe.options["eval_per_class"], recipe.seed)


def train_digits_flow(recipe: Recipe, steps: int):
    """The digits UNet trained with the CFM loss on x_s = (1 - s) x_0 + s eps, target eps - x_0, s ~ U[0, 1],
    fed the timestep 1000 s (flow.TIME_SCALE); labels dropped to NULL_LABEL for classifier-free guidance."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    images, labels = datasets.digits("train")
    model = models.build_digits_unet()
    ema = copy.deepcopy(model).requires_grad_(False)

    def batch_loss(step):
        idx = torch.randint(0, len(images), (recipe.batch_size,), generator=gen)
        y = labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < recipe.options["label_dropout"]] = models.NULL_LABEL
        return flow.random_cfm_loss(lambda x, s: model(x, flow.timestep(s, len(x)), class_labels=y).sample,
                                    images[idx], gen)

    final_loss = _fit(recipe, steps, model.parameters(), batch_loss, lr_schedule="onecycle",
                      after_step=lambda step: fitting.ema_update(ema, model, fitting.ema_decay(step, recipe.options["ema"])))
    return ema, final_loss, flow_class_accuracy(ema, recipe.options["eval_per_class"], recipe.options["eval_steps"],
                                                recipe.seed)


@torch.no_grad()
def flow_class_accuracy(unet, per_class: int, steps: int, seed: int = 0) -> dict:
    """Class-conditional Euler samples of a flow UNet (no guidance) scored by the shipped digit classifier."""
    try:
        classifier = models.load_classifier()
    except checkpoints.CheckpointError as err:
        return {"class_accuracy": None, "note": str(err)}
    unet.eval()
    y = torch.arange(models.NUM_DIGIT_CLASSES).repeat_interleave(per_class)
    samples, _ = flow.flow_sample(flow.unet_velocity(unet, y), (len(y), 1, 16, 16), steps, "euler", seed=seed)
    accuracy = (classifier(samples.clamp(-1, 1)).argmax(1) == y).float().mean().item()
    return {"class_accuracy": round(accuracy, 4), "samples_scored": len(y), "euler_steps": steps}


@torch.no_grad()
def unet_class_accuracy(unet, per_class: int, seed: int = 0) -> dict:
    """Class-conditional DDPM samples (no guidance) scored by the shipped digit classifier."""
    try:
        classifier = models.load_classifier()
    except checkpoints.CheckpointError as err:
        return {"class_accuracy": None, "note": str(err)}
    unet.eval()
    y = torch.arange(models.NUM_DIGIT_CLASSES).repeat_interleave(per_class)
    samples, _ = ddpm.ddpm_sample(lambda x, t: unet(x, t, class_labels=y).sample, get_schedule("linear"),
                                      (len(y), 1, 16, 16), seed=seed)
    accuracy = (classifier(samples.clamp(-1, 1)).argmax(1) == y).float().mean().item()
    real_accuracy = checkpoints.read_manifest()["digit_classifier"]["quality"]["test_accuracy"]
    return {"class_accuracy": round(accuracy, 4), "samples_scored": len(y),
            "real_data_accuracy": real_accuracy}


def noisy_accuracy(model, schedule, timesteps, seed: int = 0) -> dict:
    """Accuracy of p_phi(y | x_t, t) on held-out digits noised to each t (fixed, seeded noise)."""
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
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    images, labels = datasets.digits("train")
    schedule = get_schedule("linear")
    model = models.NoisyDigitClassifier(width=recipe.options["width"])

    def batch_loss(step):
        idx = torch.randint(0, len(images), (recipe.batch_size,), generator=gen)
        shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
        x_0 = torch.roll(images[idx], shifts=shift, dims=(2, 3))
        t = torch.randint(0, schedule.T, (recipe.batch_size,), generator=gen)
        x_t = forward.q_sample(schedule, x_0, t, torch.randn(x_0.shape, generator=gen))
        return F.cross_entropy(model(x_t, t), labels[idx])

    final_loss = _fit(recipe, steps, model.parameters(), batch_loss, weight_decay=1e-4, lr_schedule="cosine")
    model.eval()
    return model, final_loss, noisy_accuracy(model, schedule, recipe.options["eval_t"], recipe.seed)


def train_shapes_classifier(recipe: Recipe, steps: int):
    """Cross-entropy on shape class and colour, with random shifts; scores notebook 08's generated images."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    data = datasets.shapes(**SHAPES_TRAIN)
    model = models.ShapesClassifier()

    def batch_loss(step):
        idx = torch.randint(0, len(data), (recipe.batch_size,), generator=gen)
        shape_logits, colour_logits = model(data.images[idx])
        loss = F.cross_entropy(shape_logits, data.labels[idx]) + F.cross_entropy(colour_logits, data.colours[idx])
        return loss, {"loss": f"{loss.item():.4f}"}

    final_loss = _fit(recipe, steps, model.parameters(), batch_loss, weight_decay=1e-4)
    model.eval()
    return model, final_loss, shapes_accuracy(model, datasets.shapes(1000, seed=1))


@torch.no_grad()
def shapes_accuracy(classifier, data) -> dict:
    shape_logits, colour_logits = classifier(data.images)
    return {"shape_accuracy": round((shape_logits.argmax(1) == data.labels).float().mean().item(), 4),
            "colour_accuracy": round((colour_logits.argmax(1) == data.colours).float().mean().item(), 4),
            "images_scored": len(data)}


def train_vae(recipe: Recipe, steps: int):
    """AutoencoderKL on shapes: MSE reconstruction + kl_weight * KL (weak, or zero for the comparison)."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    images = datasets.shapes(**SHAPES_TRAIN).images
    vae = ldm.build_vae()

    def batch_loss(step):
        idx = torch.randint(0, len(images), (recipe.batch_size,), generator=gen)
        loss, parts = ldm.vae_loss(vae, images[idx], recipe.options["kl_weight"], gen)
        return loss, {"mse": f"{parts['mse']:.4f}", "kl": f"{parts['kl']:.1f}"}

    final_loss = _fit(recipe, steps, vae.parameters(), batch_loss, lr_schedule="onecycle")
    vae.eval()
    held_out = datasets.shapes(500, seed=1).images
    with torch.no_grad():
        latents = ldm.encode_mean(vae, images[:1000])
        reconstruction_mse = F.mse_loss(ldm.decode(vae, ldm.encode_mean(vae, held_out)), held_out).item()
    return vae, final_loss, {"held_out_mse": round(reconstruction_mse, 5), "latent_std": round(latents.std().item(), 4),
                              "latent_mean": round(latents.mean().item(), 4),
                              "latent_scaling_factor": round(ldm.latent_scaling_factor(latents), 5)}


def train_clip(recipe: Recipe, steps: int):
    """The tiny CLIP: symmetric cross-entropy over the image-caption similarity matrix of each batch."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    data = datasets.shapes(**SHAPES_TRAIN)
    tokens = ldm.tokenize_batch(data.captions)
    caption_id = data.labels * len(datasets.COLOUR_NAMES) + data.colours
    model = ldm.TinyCLIP()

    def batch_loss(step):
        idx = torch.randint(0, len(data), (recipe.batch_size,), generator=gen)
        same_caption = caption_id[idx, None] == caption_id[None, idx]
        loss = ldm.clip_loss(model.similarity(data.images[idx], tokens[idx]), model.logit_scale, same_caption)
        return loss, {"loss": f"{loss.item():.4f}"}

    final_loss = _fit(recipe, steps, model.parameters(), batch_loss, lr_schedule="cosine", weight_decay=1e-4)
    model.eval()
    return model, final_loss, clip_retrieval_accuracy(model, datasets.shapes(1000, seed=1))


@torch.no_grad()
def clip_retrieval_accuracy(model, data) -> dict:
    """How often each held-out image's most similar caption, among all twelve, is its own."""
    best = model.similarity(data.images, ldm.tokenize_batch(ldm.all_captions())).argmax(1)
    truth = data.labels * len(datasets.COLOUR_NAMES) + data.colours
    return {"zero_shot_caption_accuracy": round((best == truth).float().mean().item(), 4), "images_scored": len(data)}


def train_digits_controlnet(recipe: Recipe, steps: int):
    """A ControlNet (digit mask -> digit) on the frozen shipped digits UNet; scored by IoU on held-out masks."""
    unet = models.load_digits_unet()
    torch.manual_seed(recipe.seed)
    distance_at_step_0 = cn.distance_from_base(unet, cn.ControlNet(unet, zero_init=recipe.options["zero_init"]))
    model, history = cn.train_controlnet(unet, steps, recipe.batch_size, recipe.lr, recipe.options["zero_init"],
                                         seed=recipe.seed)
    return model, sum(history[-50:]) / len(history[-50:]), controlnet_adherence(unet, model, distance_at_step_0,
                                                                                   recipe.options["eval_masks"])


def controlnet_adherence(unet, model, distance_at_step_0: float, n_masks: int = 297) -> dict:
    """IoU of held-out masks with the ink of samples drawn for them: controlled (null label), and the base
    model told the true digit; plus how far the untrained ControlNet moved the base model's eps."""
    images, labels = datasets.digits("test")
    images, labels = images[:n_masks], labels[:n_masks]
    masks = cn.digit_masks(images)
    null = torch.full_like(labels, models.NULL_LABEL)
    return {"iou_control": round(cn.adherence(unet, model, masks, null)["iou"], 4),
            "iou_control_with_label": round(cn.adherence(unet, model, masks, labels)["iou"], 4),
            "iou_base_with_label": round(cn.adherence(unet, None, masks, labels)["iou"], 4),
            "distance_from_base_at_step_0": round(distance_at_step_0, 5),
            "distance_from_base_after": round(cn.distance_from_base(unet, model), 5), "masks_scored": len(masks)}


def train_latent_unet(recipe: Recipe, steps: int):
    """L_simple on scaled VAE latents, cross-attending to the frozen text encoder's token states.

    Captions are dropped to "" (for classifier-free guidance) and single words to <unk> (so unknown words
    mean "any"), each with the recipe's probability.
    """
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    text_encoder, data = ldm.load_shapes_clip().text, datasets.shapes(**SHAPES_TRAIN)
    width = text_encoder.config["width"]
    if recipe.options.get("pixel_space"):  # the pixel-space twin: the same recipe on the images themselves
        vae, scaling_factor, latents = None, 1.0, data.images
        unet = ldm.build_latent_unet(ldm.pixel_unet_config(cross_attention_dim=width))
    else:
        vae, scaling_factor = ldm.load_shapes_vae(), ldm.load_latent_scaling_factor()
        latents = ldm.encode_mean(vae, data.images) * scaling_factor
        unet = ldm.build_latent_unet(ldm.latent_unet_config(cross_attention_dim=width))
    tokens, empty_prompt = ldm.tokenize_batch(data.captions), torch.tensor(ldm.tokenize(""))
    ema = copy.deepcopy(unet).requires_grad_(False)
    schedule = get_schedule("linear")

    def batch_loss(step):
        idx = torch.randint(0, len(latents), (recipe.batch_size,), generator=gen)
        ids = tokens[idx].clone()
        word = (ids > ldm.UNK) & (torch.rand(ids.shape, generator=gen) < recipe.options["word_dropout"])
        ids[word] = ldm.UNK
        ids[torch.rand(len(ids), generator=gen) < recipe.options["caption_dropout"]] = empty_prompt
        with torch.no_grad():
            context = text_encoder(ids)
        loss = ddpm.random_l_simple(lambda z, t: unet(z, t, encoder_hidden_states=context).sample, schedule,
                                      latents[idx], gen)
        return loss, {"loss": f"{loss.item():.4f}"}

    final_loss = _fit(recipe, steps, unet.parameters(), batch_loss, lr_schedule="onecycle", after_step=lambda step: fitting.ema_update(
                          ema, unet, fitting.ema_decay(step, recipe.options["ema"])))
    ema.eval()
    quality = {f"w{w:g}": ldm.text_to_image_accuracy(ema, vae, text_encoder, scaling_factor, w,
                                                 recipe.options["eval_per_caption"], recipe.seed)
               for w in recipe.options["eval_w"]}
    return ema, final_loss, quality


TRAINERS = {"toy": train_toy, "classifier": train_classifier, "unet": train_unet, "flow": train_digits_flow,
            "noisy_classifier": train_noisy_classifier, "shapes_classifier": train_shapes_classifier,
            "vae": train_vae, "clip": train_clip, "controlnet": train_digits_controlnet,
            "latent_unet": train_latent_unet}


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
