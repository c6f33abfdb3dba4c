"""The workbook's LoRA against peft's on the same layers with the same weights, merging, the fine-tuning loop,
the new-concept data, the scale widget, and the notebook's two checkers with wrong answers."""
import copy
import math

import pytest
import torch
from torch import nn

from course import lora, models, plotting, widgets
from course.exercises import ExerciseFailed, check_lora_layer, check_merge

peft = pytest.importorskip("peft", reason="peft is the reference LoRA implementation these cross-checks need")


def _randomise_B(model, seed=0):
    """B starts at zero; give it values so the adapter does something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return models.build_digits_unet().eval()  # random weights: cross-checks need no checkpoint


def _unet_inputs(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 16, 16, generator=gen), torch.randint(0, 1000, (n,), generator=gen),
            torch.randint(0, 11, (n,), generator=gen))


def _out(model, inputs):
    x, t, y = inputs
    with torch.no_grad():
        return model(x, t, class_labels=y).sample


# --------------------------------------------------------------------------- against peft

class _OneLayer(nn.Module):
    def __init__(self, d_in, d_out, bias=True):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=bias)

    def forward(self, x):
        return self.proj(x)


@pytest.mark.parametrize("d_in, d_out, r, alpha, bias", [(64, 64, 4, 4, True), (128, 32, 1, 8, True),
                                                         (16, 48, 8, 3, False)])
def test_lora_linear_matches_peft_on_the_same_layer(d_in, d_out, r, alpha, bias):
    torch.manual_seed(1)
    reference = _OneLayer(d_in, d_out, bias)
    ours = lora.LoRALinear(copy.deepcopy(reference.proj), r=r, alpha=alpha)
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"]),
                                          copy.deepcopy(reference))
    layer = theirs.proj
    assert layer.scaling["default"] == ours.scaling == alpha / r
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0 and torch.count_nonzero(ours.lora_B) == 0
    x = torch.randn(5, 7, d_in)
    assert torch.equal(ours(x), reference(x))  # B = 0: exactly the base layer
    with torch.no_grad():
        ours.lora_A.copy_(torch.randn(r, d_in))
        ours.lora_B.copy_(torch.randn(d_out, r))
        layer.lora_A["default"].weight.copy_(ours.lora_A)
        layer.lora_B["default"].weight.copy_(ours.lora_B)
        assert (ours(x) - theirs(x)).abs().max() < 1e-6
        assert (ours.delta_weight() - layer.get_delta_weight("default")).abs().max() < 1e-6
        ours.merge()
        layer.merge()
        assert (ours.base.weight - layer.base_layer.weight).abs().max() < 1e-6
        assert (ours(x) - theirs(x)).abs().max() < 1e-5
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]


def test_lora_unet_matches_peft_with_the_same_weights(unet):
    targets = list(lora.DEFAULT_TARGETS)
    ours = copy.deepcopy(unet)
    wrapped = lora.inject_lora(ours, r=4, alpha=8, targets=targets)
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets),
                                          copy.deepcopy(unet))
    _randomise_B(ours)
    peft_params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name in wrapped:
            layer = ours.get_submodule(name)
            peft_params[f"{name}.lora_A.default.weight"].copy_(layer.lora_A)
            peft_params[f"{name}.lora_B.default.weight"].copy_(layer.lora_B)
    peft_layers = [n for n, m in theirs.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert sorted(peft_layers) == sorted(wrapped) and len(wrapped) == 16 + 11  # 4 attention layers x 4 projections, 11 ResNet blocks
    inputs = _unet_inputs()
    err = (_out(ours, inputs) - _out(theirs, inputs)).abs().max().item()
    assert err < 1e-6, err
    assert (_out(ours, inputs) - _out(unet, inputs)).abs().max() > 1e-3  # and the adapter does change the output
    assert lora.count_parameters(ours)["trainable"] == sum(p.numel() for p in theirs.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- the layer's properties

def test_zero_B_means_the_adapted_unet_is_the_base_at_step_zero(unet):
    adapted = lora.lora_copy(unet, r=8)
    inputs = _unet_inputs()
    assert torch.equal(_out(adapted, inputs), _out(unet, inputs))
    counts = lora.count_parameters(adapted)
    expected = sum(lora.lora_parameter_count(m.in_features, m.out_features, 8) for m in lora.lora_layers(adapted).values())
    assert counts["trainable"] == expected and counts["total"] == expected + lora.count_parameters(unet)["total"]
    assert not any(p.requires_grad for n, p in adapted.named_parameters() if ".lora_" not in n)


def test_merged_equals_unmerged_and_unmerge_restores_the_base(unet):
    adapted = lora.lora_copy(unet, r=4, alpha=8)
    _randomise_B(adapted)
    inputs = _unet_inputs()
    before = {n: p.clone() for n, p in adapted.named_parameters() if ".base." in n}
    for scale in (1.0, 0.5):
        lora.set_lora_scale(adapted, scale)
        unmerged = _out(adapted, inputs)
        lora.merge_lora(adapted)
        assert all(layer.merged for layer in lora.lora_layers(adapted).values())
        assert (_out(adapted, inputs) - unmerged).abs().max() < 1e-5
        lora.unmerge_lora(adapted)
        assert max((p - before[n]).abs().max().item() for n, p in adapted.named_parameters() if n in before) < 1e-6
    assert (_out(adapted, inputs) - unmerged).abs().max() < 1e-5


def test_scale_blends_linearly_from_base_to_adapted():
    torch.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(10, 6), r=2, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 10)
    with torch.no_grad():
        base, full = layer.base(x), layer(x)
        layer.scale = 0.0
        assert torch.equal(layer(x), base)
        layer.scale = 0.25
        assert torch.allclose(layer(x), base + 0.25 * (full - base), atol=1e-6)
    assert torch.allclose(lora.merge_weight(layer.base.weight, layer.lora_A, layer.lora_B, 4, 0.25),
                          layer.base.weight + 0.25 * layer.delta_weight(), atol=1e-7)


def test_bad_input_errors(unet):
    linear = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="r must be a positive int"):
        lora.LoRALinear(linear, r=0)
    with pytest.raises(ValueError, match="r = 5 is larger"):
        lora.LoRALinear(linear, r=5)
    with pytest.raises(ValueError, match="alpha must be a positive"):
        lora.LoRALinear(linear, r=2, alpha=-1)
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        lora.LoRALinear(nn.Conv2d(1, 1, 3), r=1)
    layer = lora.LoRALinear(linear, r=2)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.scale = 0.5
    with pytest.raises(ValueError, match="no module of the model is named like"):
        lora.inject_lora(copy.deepcopy(unet), targets=("to_qq",))
    with pytest.raises(TypeError, match="Conv2d"):
        lora.inject_lora(copy.deepcopy(unet), targets=("conv_in",))
    adapted = lora.lora_copy(unet, r=1)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        lora.inject_lora(adapted)
    with pytest.raises(ValueError, match="no LoRA layers"):
        lora.set_lora_scale(unet, 0.5)
    with pytest.raises(ValueError, match="no parameter of the model requires grad"):
        lora.fine_tune(copy.deepcopy(unet).requires_grad_(False), torch.zeros(2, 1, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="differ in length"):
        lora.fine_tune(adapted, torch.zeros(2, 1, 16, 16), torch.zeros(3))
    with pytest.raises(ValueError, match="A must be"):
        lora.merge_weight(torch.zeros(4, 8), torch.zeros(2, 4), torch.zeros(4, 2), 1.0)
    with pytest.raises(ValueError, match="shape"):
        lora.bold(torch.zeros(16, 16))
    with pytest.raises(ValueError, match="per_class = 500"):
        lora.bold_digits("test", per_class=500)


# --------------------------------------------------------------------------- data, training, widget

def test_bold_digits_thicken_the_strokes_and_keep_split_and_labels():
    from course import datasets

    images, labels = datasets.digits("test")
    bold, bold_labels = lora.bold_digits("test")
    assert bold.shape == images.shape and torch.equal(bold_labels, labels)
    assert (bold >= images).all() and bold.min() >= -1 and bold.max() <= 1
    assert ((bold + 1) / 2).mean() > 1.4 * ((images + 1) / 2).mean()  # much more ink
    small, small_labels = lora.bold_digits("train", per_class=3, seed=0)
    assert len(small) == 30 and torch.equal(torch.bincount(small_labels), torch.full((10,), 3))
    assert torch.equal(small, lora.bold_digits("train", per_class=3, seed=0)[0])


def test_framed_digits_score_one_and_real_digits_do_not():
    from course import datasets

    images, _ = datasets.digits("test")
    framed = lora.framed(images)
    assert torch.equal(framed[..., 1:-1, 1:-1], images[..., 1:-1, 1:-1])  # the digit inside is untouched
    assert torch.allclose(lora.frame_score(framed), torch.ones(len(images)))
    assert lora.frame_score(images).mean() < 0.3
    with pytest.raises(ValueError, match="shape"):
        lora.frame_score(torch.zeros(16, 16))


def test_the_identifier_is_a_new_label_and_the_base_is_left_alone(unet):
    model = lora.with_identifier(unet)
    assert model.class_embedding.num_embeddings == unet.class_embedding.num_embeddings + 1 == lora.IDENTIFIER_LABEL + 1
    assert torch.equal(model.class_embedding.weight[:-1], unet.class_embedding.weight)
    x_t, t = torch.randn(2, 1, 16, 16), torch.tensor([500, 500])
    with torch.no_grad():  # the digits' labels give the base model's output exactly
        assert torch.equal(model(x_t, t, class_labels=torch.tensor([3, 7])).sample,
                           unet(x_t, t, class_labels=torch.tensor([3, 7])).sample)
        model(x_t, t, class_labels=torch.full((2,), lora.IDENTIFIER_LABEL))
    adapted = lora.lora_copy(model, r=2)
    assert not adapted.class_embedding.weight.requires_grad  # LoRA leaves the identifier's embedding frozen
    with pytest.raises(ValueError, match="class embedding"):
        lora.with_identifier(model)
    images, labels, shown = lora.concept_digits((3, 5), per_class=2)
    assert len(images) == 4 and (labels == lora.IDENTIFIER_LABEL).all() and set(shown.tolist()) == {3, 5}
    assert torch.allclose(lora.frame_score(images), torch.ones(4))


def test_optimizer_state_is_measured_in_bytes(unet):
    adapted = lora.lora_copy(unet, r=4)
    trainable = lora.count_parameters(adapted)["trainable"]
    memory = lora.optimizer_state_bytes(adapted)
    assert memory["optimizer_state_bytes"] == 2 * 4 * trainable  # AdamW: exp_avg and exp_avg_sq, float32
    assert memory["gradient_bytes"] == 4 * trainable
    full = lora.optimizer_state_bytes(lora.full_copy(unet))
    assert full["optimizer_state_bytes"] == 2 * 4 * lora.count_parameters(unet)["total"] == 2 * full["weight_bytes"]
    assert all(p.grad is None for p in adapted.parameters())  # measured on a copy


def test_prior_preservation_adds_the_prior_term_and_checks_its_shape(unet):
    model = lora.lora_copy(lora.with_identifier(unet), r=2)
    images, labels, _ = lora.concept_digits((3,), per_class=2)
    prior_images, prior_labels = torch.rand(4, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 3])
    plain = lora.fine_tune(copy.deepcopy(model), images, labels, steps=2, batch_size=2, seed=1, progress=False)
    with_prior = lora.fine_tune(copy.deepcopy(model), images, labels, steps=2, batch_size=2, seed=1, progress=False,
                                prior=(prior_images, prior_labels))
    assert with_prior["losses"][0] > plain["losses"][0]  # the same instance term plus a positive prior term
    with pytest.raises(ValueError, match="prior"):
        lora.fine_tune(model, images, labels, steps=1, prior=(prior_images[:, :, :8], prior_labels), progress=False)


def test_score_forgetting_reports_the_untouched_classes_and_the_identifier(unet):
    model = lora.with_identifier(unet)
    report = lora.score_forgetting(model, per_class=2, identifier_n=3, steps=2)
    assert report["n"] == 20 and 0 <= report["class_accuracy"] <= 1 and report["samples"].shape == (20, 1, 16, 16)
    assert 0 <= report["leak_frame_score"] <= 1 and report["identifier_samples"].shape == (3, 1, 16, 16)
    again = lora.score_forgetting(model, base_samples=report["samples"], per_class=2, identifier_n=3, steps=2)
    assert again["pixel_change"] == 0.0  # the same model from the same noise


def test_the_explorer_labels_its_images():
    from PIL import Image
    import io

    png = widgets.lora.labelled_grid_png(torch.zeros(3, 1, 16, 16), ["0", "1", "[V]"], ncols=3)
    plain = Image.open(io.BytesIO(plotting.grid_png(torch.zeros(3, 1, 16, 16), 3)))
    labelled = Image.open(io.BytesIO(png))
    assert labelled.width == plain.width and labelled.height == plain.height + 12
    assert widgets.lora.label_name(lora.IDENTIFIER_LABEL) == "[V]" and widgets.lora.label_name(4) == "4"


def test_fine_tune_updates_only_the_adapter_and_is_seeded(unet):
    images, labels = lora.bold_digits("train", per_class=1)
    runs = []
    for _ in range(2):
        adapted = lora.lora_copy(unet, r=2)
        frozen = {n: p.clone() for n, p in adapted.named_parameters() if not p.requires_grad}
        result = lora.fine_tune(adapted, images, labels, steps=3, batch_size=4, lr=1e-2, seed=3, progress=False)
        assert all(torch.equal(p, frozen[n]) for n, p in adapted.named_parameters() if n in frozen)
        assert any(torch.count_nonzero(m.lora_B) for m in lora.lora_layers(adapted).values())
        assert result["trainable"] == lora.count_parameters(adapted)["trainable"] and len(result["losses"]) == 3
        runs.append(result["losses"])
    assert runs[0] == runs[1]
    full = lora.full_copy(unet)
    assert lora.count_parameters(full)["trainable"] == lora.count_parameters(unet)["total"]


def test_scale_explorer_caches_each_scale_and_scale_zero_is_the_base(unet):
    adapted = lora.lora_copy(unet, r=4)
    _randomise_B(adapted)
    explorer = widgets.LoRAScaleExplorer(adapted, labels=torch.tensor([3, 7]), steps=2)
    assert explorer.slider.value == 1.0 and len(explorer.latencies) == 1
    adapted_png = explorer.image.value
    explorer.slider.value = 0.0
    assert explorer.image.value != adapted_png and "base model" in explorer.readout.value
    base = lora.sample_digits(unet, torch.tensor([3, 7]), x_T=explorer.x_T, steps=2)
    assert torch.allclose(explorer.samples[0.0], base, atol=1e-6)
    explorer.slider.value = 0.5
    assert len(explorer.latencies) == 3 and "blend" in explorer.readout.value
    explorer.slider.value = 1.0  # seen before: no new sampling
    assert explorer.image.value == adapted_png and len(explorer.latencies) == 3
    assert all(layer.scale == 1.0 for layer in lora.lora_layers(adapted).values())  # the model is left as it was
    lora.merge_lora(adapted)
    with pytest.raises(ValueError, match="merged"):
        widgets.LoRAScaleExplorer(adapted, labels=torch.tensor([1]), steps=1)
    fig = plotting.before_after_figure(base, explorer.samples[0.5], labels=[3, 7])
    assert len(fig.subfigs) == 2


def test_score_adaptation_reports_new_and_old_figures(unet):
    report = lora.score_adaptation(unet, n=70, steps=1)
    assert report["n"] == 70 and report["samples"].shape == (70, 1, 16, 16)
    for key in ("new_fid", "new_fid_floor", "old_fid", "old_fid_floor", "class_accuracy"):
        assert math.isfinite(report[key])
    assert report["new_fid_floor"] < report["new_fid"]  # an untrained UNet is far from real bold digits


# --------------------------------------------------------------------------- checkers

class _RightLoRA(nn.Module):
    def __init__(self, base, r, alpha, zero_A=False, random_B=False, train_base=False, scaling=None,
                 no_base=False, detach=False, plain_tensors=False, frozen_B=False):
        super().__init__()
        self.base = base if train_base else base.requires_grad_(False)
        A = torch.zeros(r, base.in_features) if zero_A else torch.randn(r, base.in_features) / base.in_features ** 0.5
        B = torch.randn(base.out_features, r) if random_B else torch.zeros(base.out_features, r)
        if plain_tensors:  # trainable tensors, yet not registered: layer.parameters() does not see them
            self.lora_A, self.lora_B = A.requires_grad_(True), B.requires_grad_(True)
        else:
            self.lora_A, self.lora_B = nn.Parameter(A), nn.Parameter(B, requires_grad=not frozen_B)
        self.scaling = alpha / r if scaling is None else scaling(alpha, r)
        self.no_base, self.detach = no_base, detach

    def forward(self, x):
        update = x @ self.lora_A.T @ self.lora_B.T * self.scaling
        out = update if self.no_base else self.base(x) + update
        return out.detach() if self.detach else out


def _variant(**kwargs):
    def make(base, r, alpha):
        return _RightLoRA(copy.deepcopy(base), r, alpha, **kwargs)
    return make


class _RegisteredLoRA(nn.Module):
    """A correct variant: the matrices registered with register_parameter, the scale applied to A x first."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.register_parameter("lora_A", nn.Parameter(torch.randn(r, base.in_features) / base.in_features ** 0.5))
        self.register_parameter("lora_B", nn.Parameter(torch.zeros(base.out_features, r)))
        self.alpha, self.r = alpha, r

    def forward(self, x):
        return self.base(x) + torch.nn.functional.linear(self.alpha / self.r * (x @ self.lora_A.T), self.lora_B)


def test_lora_layer_checker_passes_the_reference_and_the_package(capsys):
    check_lora_layer(_variant())
    check_lora_layer(lambda base, r, alpha: lora.LoRALinear(copy.deepcopy(base), r, alpha))
    check_lora_layer(lambda base, r, alpha: _RegisteredLoRA(copy.deepcopy(base), r, alpha))
    check_lora_layer(_variant(scaling=lambda alpha, r: float(alpha) / float(r)))
    assert capsys.readouterr().out.count("LoRALayer: all") == 4


@pytest.mark.parametrize("wrong, message", [
    (_variant(random_B=True), "B must start at zero"),
    (_variant(zero_A=True), "A must start random"),
    (_variant(train_base=True), "freeze the base"),
    (_variant(scaling=lambda alpha, r: 1.0), "multiply B A x by alpha / r"),
    (_variant(scaling=lambda alpha, r: alpha), "not alpha"),
    (_variant(scaling=lambda alpha, r: r / alpha), "not r / alpha"),
    (_variant(scaling=lambda alpha, r: alpha // r), "integer"),
    (_variant(scaling=lambda alpha, r: int(alpha / r)), "integer"),
    (_variant(plain_tensors=True), "plain tensor with requires_grad=True: wrap it in nn.Parameter"),
    (_variant(frozen_B=True), "must be trainable"),
    (_variant(no_base=True), "output before training"),
    (_variant(detach=True), "no gradient"),
    (lambda base, r, alpha: "not a module", "nn.Module"),
])
def test_lora_layer_checker_rejects_wrong_layers(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_lora_layer(wrong)


class _TransposedA(_RightLoRA):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.lora_A = nn.Parameter(torch.randn(base.in_features, r))


def test_lora_layer_checker_names_transposed_shapes():
    with pytest.raises(ExerciseFailed, match="transposed"):
        check_lora_layer(lambda base, r, alpha: _TransposedA(copy.deepcopy(base), r, alpha))


def _merge_right(weight, lora_A, lora_B, alpha, scale=1.0):
    return weight + scale * alpha / lora_A.shape[0] * lora_B @ lora_A


def _merge_in_place(weight, lora_A, lora_B, alpha, scale=1.0):
    weight += scale * alpha / lora_A.shape[0] * lora_B @ lora_A
    return weight


def test_merge_checker_passes_the_reference(capsys):
    check_merge(_merge_right)
    check_merge(lora.merge_weight)
    assert capsys.readouterr().out.count("merge: all") == 2


@pytest.mark.parametrize("wrong, message", [
    (_merge_in_place, "do not add in place"),
    (lambda W, A, B, alpha, scale=1.0: W + alpha / A.shape[0] * B @ A, "multiply the update by scale"),
    (lambda W, A, B, alpha, scale=1.0: W + scale * alpha * B @ A, "not alpha"),
    (lambda W, A, B, alpha, scale=1.0: scale * alpha / A.shape[0] * B @ A, "not the update alone"),
    (lambda W, A, B, alpha, scale=1.0: W + scale * alpha / A.shape[0] * A.T @ B.T, "raised|shape|differs"),
    (lambda W, A, B, alpha, scale=1.0: (W + scale * alpha / A.shape[0] * B @ A).double(), "dtype"),
    (lambda W, A, B, alpha, scale=1.0: None, "should be a torch.Tensor"),
])
def test_merge_checker_rejects_wrong_merges(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_merge(wrong)
