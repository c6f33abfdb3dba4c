"""Recipes run, checkpoints load only when verified, and the reverse step matches diffusers."""
import dataclasses
import json

import pytest
import torch
from diffusers import DDPMScheduler

from course import checkpoints, ddpm, models, train
from course.schedules import linear_schedule


SMALL_EVALUATION = {"eval_per_caption": 1, "eval_masks": 4, "eval_per_class": 1, "eval_steps": 2}  # the recipes' quality figures, at test size
SMALL_BATCH = 8  # a few steps at the recipes' own batch sizes (up to 512) cost minutes and test nothing more


def _distinct_recipes():
    """Recipes other than the digits UNet, less those that repeat an earlier one but for steps and EMA decay."""
    seen, names = set(), []
    for name, recipe in train.RECIPES.items():
        options = {k: v for k, v in recipe.options.items() if k != "ema"}
        key = (recipe.kind, recipe.batch_size, recipe.lr, json.dumps(options, sort_keys=True))
        if recipe.kind != "unet" and key not in seen:
            seen.add(key)
            names.append(name)
    return names


@pytest.mark.parametrize("name", _distinct_recipes())
def test_small_recipes_run_a_few_steps_and_record_everything(name, tmp_path, monkeypatch):
    recipe = train.RECIPES[name]
    options = {**recipe.options, **{k: v for k, v in SMALL_EVALUATION.items() if k in recipe.options}}
    if "eval_w" in options:
        options["eval_w"] = options["eval_w"][-1:]
    monkeypatch.setitem(train.RECIPES, name, dataclasses.replace(recipe, batch_size=min(recipe.batch_size, SMALL_BATCH),
                                                                 options=options))
    entry = train.run(name, steps=3, out=tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())[name]
    for key in ("recipe", "seed", "steps", "wall_time_s", "final_loss", "quality", "size_bytes", "sha256"):
        assert key in manifest, key
    assert manifest["steps"] == 3 and entry["sha256"] == checkpoints.sha256(tmp_path / f"{name}.safetensors")


def test_unet_recipe_trains_a_step_and_its_model_has_attention_and_a_null_label(tmp_path, monkeypatch):
    monkeypatch.setitem(train.RECIPES["digits_unet"].options, "eval_per_class", 1)
    monkeypatch.setattr(train, "unet_class_accuracy", lambda *a, **k: {"class_accuracy": None})
    entry = train.run("digits_unet", steps=1, out=tmp_path)
    assert entry["parameters"] < 2_000_000 and entry["size_bytes"] < 6_000_000
    unet = models.build_digits_unet()
    assert any("attentions" in name for name, _ in unet.named_modules())
    assert unet.config.num_class_embeds == models.NULL_LABEL + 1


def test_loading_verifies_the_sha256_and_says_how_to_rebuild(tmp_path):
    train.run("digit_classifier", steps=2, out=tmp_path)
    assert isinstance(models.load_classifier(tmp_path), models.DigitClassifier)
    path = tmp_path / "digit_classifier.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(checkpoints.CheckpointError, match=r"corrupt.*python -m course.train digit_classifier"):
        models.load_classifier(tmp_path)
    path.unlink()
    with pytest.raises(checkpoints.CheckpointError, match=r"missing.*python -m course.train digit_classifier"):
        models.load_classifier(tmp_path)
    with pytest.raises(checkpoints.CheckpointError, match="no manifest entry"):
        models.load_digits_unet(tmp_path)


def test_shipped_checkpoints_match_their_manifest():
    manifest = checkpoints.read_manifest()
    for name, entry in manifest.items():
        path = checkpoints.CHECKPOINT_DIR / entry["file"]
        assert path.stat().st_size == entry["size_bytes"] < 5_000_000, name
        checkpoints.load_state(name)  # raises if the sha256 does not match


def test_unknown_recipe_is_a_clear_error(capsys):
    assert train.main(["no_such_recipe"]) == 2
    assert "unknown recipe 'no_such_recipe'" in capsys.readouterr().err


@pytest.mark.parametrize("t", [0, 1, 10, 500, 999])
def test_ddpm_step_matches_diffusers_step(t):
    scheduler = DDPMScheduler(clip_sample=False)
    scheduler.alphas_cumprod = torch.cumprod(1 - scheduler.betas.double(), 0)  # same precision as ours
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    x_t, eps = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randn(4, 1, 8, 8, dtype=torch.float64)
    theirs = scheduler.step(eps, t, x_t, generator=torch.Generator().manual_seed(3)).prev_sample
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(ddpm.ddpm_step(linear_schedule(), eps, x_t, t, noise=z), theirs, atol=1e-5)


def test_ddpm_sample_with_the_exact_eps_of_a_point_mass_recovers_it():
    schedule, target = linear_schedule(), torch.tensor([[0.7, -0.3]])

    def exact_eps(x_t, t):  # data = a single point: eps is known exactly
        ab = schedule.alpha_bar[t].float().reshape(-1, 1)
        return (x_t - ab.sqrt() * target) / (1 - ab).sqrt()

    x_0, frames = ddpm.ddpm_sample(exact_eps, schedule, (64, 2), seed=0, keep=(500,), progress=False)
    assert torch.allclose(x_0, target.expand(64, 2), atol=1e-3)
    assert set(frames) == {500}


def test_sinusoidal_embedding_shape_and_bad_dim():
    emb = models.sinusoidal_embedding(torch.arange(5), 16)
    assert emb.shape == (5, 16) and torch.allclose(emb[0, :8], torch.ones(8))
    with pytest.raises(ValueError, match="dim must be even"):
        models.sinusoidal_embedding(torch.arange(5), 15)


def test_fit_toy_passes_its_lr_schedule_to_the_loop(monkeypatch):
    from course import datasets, fitting

    seen = []
    real_fit = fitting.fit

    def spy(*args, **kwargs):
        seen.append(kwargs.get("lr_schedule"))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(fitting, "fit", spy)
    data, _ = datasets.swiss_roll(n=64, seed=0)
    runs = {}
    for schedule_name in (None, "cosine"):
        torch.manual_seed(0)
        model = models.TimeMLP(hidden=16, layers=1)
        runs[schedule_name] = train.fit_toy(model, data, linear_schedule(), steps=5, batch_size=8, lr=1e-2,
                                            lr_schedule=schedule_name)
    assert seen == [None, "cosine"]
    assert runs[None][0] == runs["cosine"][0] and runs[None][1:] != runs["cosine"][1:]  # same start, other steps
    with pytest.raises(ValueError, match="lr_schedule"):
        train.fit_toy(models.TimeMLP(hidden=16, layers=1), data, linear_schedule(), steps=1, lr_schedule="linear")
