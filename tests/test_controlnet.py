"""Notebook 09's ControlNet: exact equality with the base model at step 0, where the first gradients go, the
ablation without zero convolutions, the cross-check against diffusers' ControlNetModel.from_unet, bad input,
the widget, and the two checkers with wrong answers."""
import pytest
import torch
from torch import nn

from course import checkpoints, datasets, metrics, models, widgets
from course import controlnet as cn
from course.schedules import get_schedule
from course.exercises import ExerciseFailed, check_add_control, check_control_residuals, check_zero_conv


@pytest.fixture(scope="module")
def unet():
    return models.load_digits_unet()


def _inputs(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randn(n, 1, 16, 16, generator=gen)
    t = torch.randint(0, 1000, (n,), generator=gen)
    labels = torch.tensor([3, models.NULL_LABEL, 7, 0][:n])
    condition = (torch.rand(n, 1, 16, 16, generator=gen) > 0.6).float()
    return x_t, t, labels, condition


# --------------------------------------------------------------------------- step 0


def test_unet_with_control_none_is_the_diffusers_forward(unet):
    x_t, t, labels, _ = _inputs()
    with torch.no_grad():
        assert torch.equal(cn.unet_with_control(unet, x_t, t, labels), unet(x_t, t, class_labels=labels).sample)


def test_at_initialisation_the_controlled_model_is_exactly_the_base(unet):
    torch.manual_seed(0)
    controlnet = cn.ControlNet(unet)
    x_t, t, labels, condition = _inputs()
    with torch.no_grad():
        down, mid = controlnet(x_t, t, condition, labels)
        assert all(torch.count_nonzero(r) == 0 for r in down) and torch.count_nonzero(mid) == 0
        base = unet(x_t, t, class_labels=labels).sample
        controlled = cn.controlled_eps_model(unet, controlnet, condition, labels)(x_t, t)
    assert torch.equal(controlled, base)
    # the copy really is a copy: the same weights as the base encoder, in separate tensors
    for part in ("conv_in", "time_embedding", "class_embedding", "down_blocks", "mid_block"):
        ours, base_part = getattr(controlnet, part).state_dict(), getattr(unet, part).state_dict()
        assert all(torch.equal(ours[k], base_part[k]) for k in base_part), part
    assert controlnet.conv_in.weight.data_ptr() != unet.conv_in.weight.data_ptr()


def test_step_0_gradients_reach_only_the_zero_convolutions(unet):
    torch.manual_seed(0)
    controlnet = cn.ControlNet(unet)
    images, labels = datasets.digits("train")
    gen = torch.Generator().manual_seed(0)
    loss = cn.control_loss(unet.requires_grad_(False), controlnet, images[:16], cn.digit_masks(images[:16]),
                           labels[:16], get_schedule("linear"), gen)
    loss.backward()
    zero_convs = [*controlnet.zero_convs, controlnet.mid_zero_conv]
    zero_ids = {id(p) for conv in zero_convs for p in conv.parameters()}
    assert all(conv.weight.grad.norm() > 1e-4 and conv.bias.grad.norm() > 1e-6 for conv in zero_convs)
    others = [(n, p) for n, p in controlnet.named_parameters() if id(p) not in zero_ids]
    assert others and all(p.grad is None or torch.count_nonzero(p.grad) == 0 for _, p in others)
    assert not any(p.grad is not None for p in unet.parameters())  # the base is frozen


def test_the_copy_starts_learning_once_the_zero_convolutions_moved(unet):
    controlnet, losses = cn.train_controlnet(unet, steps=2, batch_size=8, seed=0, progress=False)
    assert len(losses) == 2 and all(conv.weight.abs().max() > 0 for conv in controlnet.zero_convs)
    images, labels = datasets.digits("train")
    controlnet.train().zero_grad()
    cn.control_loss(unet, controlnet, images[:8], cn.digit_masks(images[:8]), labels[:8],
                    get_schedule("linear"), torch.Generator().manual_seed(1)).backward()
    assert controlnet.down_blocks[0].resnets[0].conv1.weight.grad.norm() > 0
    assert controlnet.condition_embedding.conv_out.weight.grad.norm() > 0


def test_a_callback_sees_each_step_and_leaves_training_unchanged(unet):
    seen = []
    _, plain = cn.train_controlnet(unet, steps=2, batch_size=4, seed=1, progress=False)
    _, watched = cn.train_controlnet(unet, steps=2, batch_size=4, seed=1, progress=False,
                                     callback=lambda step, net: seen.append((step, net.training)))
    assert plain == watched and seen == [(0, False), (1, False), (2, False)]


def test_without_zero_convolutions_the_untrained_controlnet_moves_eps(unet):
    torch.manual_seed(0)
    assert cn.distance_from_base(unet, cn.ControlNet(unet), n=16) == 0.0
    torch.manual_seed(0)
    assert cn.distance_from_base(unet, cn.ControlNet(unet, zero_init=False), n=16) > 0.03


def test_scale_zero_or_no_controlnet_is_the_base(unet):
    torch.manual_seed(0)
    controlnet = cn.ControlNet(unet, zero_init=False)
    x_t, t, labels, condition = _inputs()
    with torch.no_grad():
        base = unet(x_t, t, class_labels=labels).sample
        assert torch.equal(cn.controlled_eps_model(unet, controlnet, condition, labels, scale=0.0)(x_t, t), base)
        assert torch.equal(cn.controlled_eps_model(unet, None, condition, labels)(x_t, t), base)
        half = controlnet(x_t, t, condition, labels, scale=0.5)
        full = controlnet(x_t, t, condition, labels)
    assert all(torch.allclose(2 * h, f, atol=1e-6) for h, f in zip(half[0], full[0]))


# --------------------------------------------------------------------------- against diffusers


def test_matches_diffusers_controlnet_from_unet():
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8).eval()
    theirs = ControlNetModel.from_unet(unet, conditioning_channels=1, conditioning_embedding_out_channels=(16,)).eval()
    ours = cn.ControlNet(unet, embedding_channels=(16,)).eval()
    for part in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
        a, b = getattr(ours, part).state_dict(), getattr(theirs, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert len(ours.zero_convs) == len(theirs.controlnet_down_blocks) == 4
    gen = torch.Generator().manual_seed(1)
    x_t, t = torch.randn(2, 4, 16, 16, generator=gen), torch.tensor([10, 700])
    context, condition = torch.randn(2, 5, 32, generator=gen), torch.rand(2, 1, 16, 16, generator=gen)
    with torch.no_grad():
        for down, mid in (ours(x_t, t, condition, encoder_hidden_states=context),
                          theirs(x_t, t, context, controlnet_cond=condition, return_dict=False)):
            assert all(torch.count_nonzero(r) == 0 for r in down) and torch.count_nonzero(mid) == 0
        trained = [*theirs.controlnet_cond_embedding.parameters(), *theirs.controlnet_down_blocks.parameters(),
                   *theirs.controlnet_mid_block.parameters()]
        for p in trained:
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        ours.condition_embedding.load_state_dict(theirs.controlnet_cond_embedding.state_dict())
        ours.zero_convs.load_state_dict(theirs.controlnet_down_blocks.state_dict())
        ours.mid_zero_conv.load_state_dict(theirs.controlnet_mid_block.state_dict())
        down, mid = ours(x_t, t, condition, encoder_hidden_states=context, scale=0.7)
        ref_down, ref_mid = theirs(x_t, t, context, controlnet_cond=condition, conditioning_scale=0.7,
                                   return_dict=False)
        assert max((a - b).abs().max().item() for a, b in zip(down, ref_down)) < 1e-5
        assert (mid - ref_mid).abs().max() < 1e-5 and mid.abs().max() > 0.1
        # add_control is what UNet2DConditionModel does with down_block_additional_residuals
        injected = unet(x_t, t, context, down_block_additional_residuals=ref_down,
                        mid_block_additional_residual=ref_mid).sample
        plain = unet(x_t, t, context).sample
    assert (injected - plain).abs().max() > 1e-3


def test_from_unet_needs_a_unet2dconditionmodel(unet):
    from diffusers import ControlNetModel

    with pytest.raises(AttributeError):  # the digits UNet2DModel has no cross-attention config
        ControlNetModel.from_unet(unet, conditioning_channels=1, conditioning_embedding_out_channels=(16,))


# --------------------------------------------------------------------------- data, adherence, bad input


def test_masks_and_iou():
    a = torch.zeros(3, 1, 4, 4)
    a[0, 0, :2] = 1
    a[1, 0, 0, 0] = 1
    b = a.clone()
    b[0, 0, :1] = 0
    assert torch.equal(cn.digit_masks(torch.tensor([[-1.0, 0.0, 0.5]])), torch.tensor([[0.0, 0.0, 1.0]]))
    assert torch.allclose(metrics.mask_iou(a, b), torch.tensor([0.5, 1.0, 1.0]))
    assert metrics.mask_iou(a[1:2], 1 - a[1:2]).item() == 0.0
    for kind in ("ring", "bar", "cross", "blob"):
        mask = cn.parametric_mask(kind, thickness=2.0, tilt=30.0)
        assert mask.shape == (1, 1, 16, 16) and 4 < mask.sum() < 200, kind


def test_adherence_runs_and_the_base_ignores_the_mask(unet):
    images, labels = datasets.digits("test")
    masks = cn.digit_masks(images[:4])
    result = cn.adherence(unet, None, masks, labels[:4], steps=3)
    assert result["samples"].shape == (4, 1, 16, 16) and 0 <= result["iou"] <= 1
    shuffled = cn.adherence(unet, None, masks.flip(0), labels[:4], steps=3)
    assert torch.equal(result["samples"], shuffled["samples"])


def test_bad_input_is_a_clear_value_error(unet):
    torch.manual_seed(0)
    controlnet = cn.ControlNet(unet)
    x_t, t, labels, condition = _inputs()
    with pytest.raises(ValueError, match=r"condition must have shape \(N, 1, 16, 16\)"):
        controlnet(x_t, t, condition[..., :8, :8], labels)
    with pytest.raises(ValueError, match=r"condition must have shape"):
        controlnet(x_t, t, condition.repeat(1, 3, 1, 1), labels)
    with pytest.raises(ValueError, match="pass class_labels"):
        controlnet(x_t, t, condition)
    with pytest.raises(ValueError, match="pass class_labels"):
        cn.unet_with_control(unet, x_t, t)
    with pytest.raises(ValueError, match="masks of shape"):
        cn.sample_with_control(unet, controlnet, condition[0], labels, steps=2)
    with pytest.raises(ValueError, match="skip connections"):
        cn.add_control((x_t,) * 3, x_t, (x_t,) * 2, x_t)
    with pytest.raises(ValueError, match="kind must be one of"):
        cn.parametric_mask("star")


def test_shipped_controlnet_loads_and_follows_the_mask_better_than_the_base():
    manifest = checkpoints.read_manifest(checkpoints.CHECKPOINT_DIR)
    if "digits_controlnet" not in manifest:
        pytest.skip("digits_controlnet is not in data/checkpoints yet")
    quality = manifest["digits_controlnet"]["quality"]
    assert quality["iou_control"] > quality["iou_base_with_label"]
    assert quality["distance_from_base_at_step_0"] == 0.0
    if "digits_controlnet_no_zero" in manifest:  # the ablation: random init moves the base model at step 0
        assert manifest["digits_controlnet_no_zero"]["quality"]["distance_from_base_at_step_0"] > 0.05
    controlnet = cn.load_digits_controlnet()
    assert not any(p.requires_grad for p in controlnet.parameters())
    assert any(conv.weight.abs().max() > 0 for conv in controlnet.zero_convs)


# --------------------------------------------------------------------------- the widget


def test_explorer_reacts_to_picker_and_slider_and_caches(unet):
    torch.manual_seed(0)
    controlnet = cn.ControlNet(unet, zero_init=False).eval()  # untrained but not zero: the scale visibly matters
    conditions = {"ring": cn.parametric_mask("ring"), "bar": cn.parametric_mask("bar", thickness=3)}
    explorer = widgets.ControlNetExplorer(unet, controlnet, conditions, n=2, steps=3, scales=(0.0, 1.0, 1.5))
    first = (explorer.samples_image.value, explorer.condition_image.value, explorer.readout.value)
    assert explorer.picker.value == "ring" and explorer.slider.value == 1.0 and len(explorer.latencies) == 1
    explorer.slider.value = 0.0
    at_zero = (explorer.samples_image.value, explorer.readout.value)
    assert at_zero[0] != first[0] and at_zero[1] != first[2] and "scale 0" in at_zero[1]
    explorer.picker.value = "bar"
    assert explorer.condition_image.value != first[1]
    # scale 0 is the base model: the same samples whatever the condition
    assert explorer.samples_image.value == at_zero[0]
    explorer.slider.value = 1.0
    assert explorer.samples_image.value != first[0]
    assert len(explorer.latencies) == 4
    explorer.picker.value = "ring"  # back to the first setting: from the cache
    assert (explorer.samples_image.value, explorer.condition_image.value, explorer.readout.value) == first
    assert len(explorer.latencies) == 4 and len(explorer.cache) == 4
    with pytest.raises(ValueError, match="at least one mask"):
        widgets.ControlNetExplorer(unet, controlnet, {})


# --------------------------------------------------------------------------- the checkers


def test_checkers_pass_the_reference():
    check_zero_conv(cn.zero_conv)
    check_add_control(cn.add_control)


def _zeroed(conv, weight=True, bias=True):
    if weight:
        nn.init.zeros_(conv.weight)
    if bias and conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


@pytest.mark.parametrize("wrong, message", [
    (lambda c: _zeroed(nn.Conv2d(c, c, 3, padding=1)), "the kernel is 3x3"),
    (lambda c: nn.Conv2d(c, c, 1), "weight and bias are random"),
    (lambda c: _zeroed(nn.Conv2d(c, c, 1), bias=False), "the bias is not"),
    (lambda c: _zeroed(nn.Conv2d(c, c, 1)).requires_grad_(False), "frozen"),
    (lambda c: _zeroed(nn.Conv2d(c, 2 * c, 1)), "maps 4 channels to 4 channels"),
    (lambda c: _zeroed(nn.Conv2d(c, c, 1, bias=False)), "no bias"),
    (lambda c: _zeroed(nn.Linear(c, c)), "use nn.Conv2d"),
    (lambda c: _zeroed(nn.Conv2d(c, c, 1)).weight, "should return an nn.Module"),
])
def test_check_zero_conv_rejects_wrong_answers(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_zero_conv(wrong)


def _in_place(down, mid, control_down, control_mid):
    for r, c in zip(down, control_down):
        r += c
    mid += control_mid
    return tuple(down), mid


@pytest.mark.parametrize("wrong, message", [
    (lambda d, m, cd, cm: (tuple(r + c for r, c in zip(d, cd)), m), "middle block's output is unchanged"),
    (lambda d, m, cd, cm: (tuple(r + c for r, c in zip(d, cd[::-1])), m + cm), "reverse order"),
    (lambda d, m, cd, cm: (tuple(cd), m + cm), "replaced by the control residuals"),
    (lambda d, m, cd, cm: (tuple(r + c for r, c in zip(d, cd)), cm), "replaced by control_mid"),
    (_in_place, "changed in place"),
    (lambda d, m, cd, cm: (d, m + cm), "skip connections are unchanged"),
    (lambda d, m, cd, cm: (tuple(r + c for r, c in zip(d, cd)),), "return a pair"),
    (lambda d, m, cd, cm: (tuple(r + c for r, c in zip(d[:-1], cd[:-1])), m + cm), "skip connections returned"),
])
def test_check_add_control_rejects_wrong_answers(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_add_control(wrong)


# --------------------------------------------------------------------------- check_control_residuals


def _residuals(net, x_t, t, condition, labels, scale=1.0, mistake=None, base=None):
    """The notebook's solution, and the mistakes students make in it."""
    source = base if base is not None else net  # base: the frozen UNet's blocks used instead of the copy's
    emb = cn.time_and_class_embedding(source, x_t, t, labels)
    h = source.conv_in(x_t)
    if mistake != "no condition":
        h = h + net.condition_embedding(condition)
    residuals = [] if mistake in ("no first", "no first, crash") else [h]
    for block in source.down_blocks:
        h, res = block(hidden_states=h, temb=emb)
        residuals += res
    h = source.mid_block(h, emb)
    convs = list(net.zero_convs)[1:] if mistake == "no first" else list(net.zero_convs)
    mistake = "no first" if mistake == "no first, crash" else mistake
    if mistake == "scale inside":
        return tuple(conv(scale * r) for conv, r in zip(convs, residuals)), net.mid_zero_conv(scale * h)
    if mistake == "no scale":
        scale = 1.0
    mid = h if mistake == "no mid conv" else net.mid_zero_conv(h)
    down = tuple(scale * r if mistake == "no zero convs" else scale * conv(r) for conv, r in zip(convs, residuals))
    if mistake == "no zero convs":
        mid = scale * h
        return down, mid
    if mistake == "detach":
        return tuple(r.detach() for r in down), (scale * mid).detach()
    if mistake == "list":
        return list(down) + [scale * mid]
    return down, scale * mid


def _residuals_functional(net, x_t, t, condition, labels, scale=1.0):
    """A correct variant: the zero convolutions applied with F.conv2d, torch.mul for the scale, a list returned."""
    emb = cn.time_and_class_embedding(net, x_t, t, labels)
    h = net.condition_embedding(condition) + net.conv_in(x_t)
    features = [h]
    for block in net.down_blocks:
        h, res = block(hidden_states=h, temb=emb)
        features.extend(res)
    mid = net.mid_block(h, emb)
    down = [torch.mul(torch.nn.functional.conv2d(f, z.weight, z.bias), scale) for f, z in zip(features, net.zero_convs)]
    return down, torch.mul(net.mid_zero_conv(mid), scale)


def test_check_control_residuals_passes_the_solution_and_variants(capsys):
    check_control_residuals(_residuals)
    check_control_residuals(_residuals_functional)
    check_control_residuals(lambda net, *args: net.forward(*args[:4], scale=args[4]))  # the package (outside grading)
    assert capsys.readouterr().out.count("control_residuals: all") == 3


@pytest.mark.parametrize("mistake, message", [
    ("no condition", "the condition never enters"),
    ("no first", "first skip connection is missing"),
    ("no first, crash", "raised RuntimeError"),  # zipped with all the zero convolutions: the widths do not match
    ("no zero convs", "without their zero convolutions"),
    ("scale inside", "not its input"),
    ("no scale", "scale is not applied"),
    ("no mid conv", "mid_zero_conv"),
    ("detach", "carry no gradient"),
    ("list", "return a pair"),
])
def test_check_control_residuals_rejects_wrong_answers(mistake, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_control_residuals(lambda *args: _residuals(*args, mistake=mistake))


def test_check_control_residuals_rejects_the_base_models_blocks(unet):
    # the frozen base's encoder instead of the trainable copy's: right shapes, wrong values
    with pytest.raises(ExerciseFailed, match="the ControlNet's own .copied. blocks|control residual 0"):
        check_control_residuals(lambda net, *args: _residuals(net, *args, base=unet))
