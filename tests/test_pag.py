"""Perturbed-attention guidance (notebook 07): cross-checks with diffusers' PAG processors, the formulas, the sampler,
the widget, and the checkers with wrong answers."""
import pytest
import torch
from diffusers.models.attention_processor import (Attention, AttnProcessor2_0, PAGCFGIdentitySelfAttnProcessor2_0,
                                                  PAGIdentitySelfAttnProcessor2_0)

from course import ldm, models, pag, widgets
from course.exercises import ExerciseFailed, check_pag_epsilon, check_perturbed_self_attention


@pytest.fixture(scope="module")
def unet():
    return models.load_digits_unet()


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(4, 1, 16, 16, generator=gen), torch.tensor([999, 700, 300, 20]),
            torch.tensor([10, 3, 10, 7]))


@pytest.mark.parametrize("layers", [("mid",), ("down.4x4",), ("up.4x4",), tuple(pag.LAYERS)])
def test_identity_processor_matches_diffusers_pag_on_the_same_layers(unet, batch, layers):
    x, t, y = batch
    with torch.no_grad():
        plain = unet(x, t, class_labels=y).sample
        with pag.perturbed_attention(unet, layers, "identity", chunks=2):
            ours = unet(torch.cat([x, x]), t.repeat(2), class_labels=y.repeat(2)).sample
        with pag.perturbed_attention(unet, layers, processor=PAGIdentitySelfAttnProcessor2_0()):
            theirs = unet(torch.cat([x, x]), t.repeat(2), class_labels=y.repeat(2)).sample
    assert (ours[4:] - theirs[4:]).abs().max() < 1e-5  # the perturbed passes agree
    assert (ours[:4] - plain).abs().max() < 1e-5  # the unperturbed half is the plain UNet
    assert (ours[4:] - plain).abs().mean() > 1e-3  # and the perturbation does change the prediction


def test_three_chunk_layout_matches_diffusers_pag_cfg(unet, batch):
    x, t, y = batch
    null = torch.full_like(y, 10)
    with torch.no_grad():
        with pag.perturbed_attention(unet, tuple(pag.LAYERS), "identity", chunks=3):
            ours = unet(torch.cat([x, x, x]), t.repeat(3), class_labels=torch.cat([null, y, y])).sample
        with pag.perturbed_attention(unet, tuple(pag.LAYERS), processor=PAGCFGIdentitySelfAttnProcessor2_0()):
            theirs = unet(torch.cat([x, x, x]), t.repeat(3), class_labels=torch.cat([null, y, y])).sample
    assert (ours - theirs).abs().max() < 1e-5
    eps_null, eps_cond, eps_hat = pag.pag_cfg_predictions(unet, x, t, y, tuple(pag.LAYERS))
    assert (torch.cat([eps_null, eps_cond, eps_hat]) - theirs).abs().max() < 1e-5


def test_processors_are_restored_even_after_an_error(unet, batch):
    x, t, y = batch
    before = {name: type(m.processor) for name, m in pag.attention_modules(unet, tuple(pag.LAYERS)).items()}
    with pytest.raises(ValueError, match="equal parts"):
        with pag.perturbed_attention(unet, tuple(pag.LAYERS), chunks=2):
            unet(x[:3], t[:3], class_labels=y[:3])
    after = {name: type(m.processor) for name, m in pag.attention_modules(unet, tuple(pag.LAYERS)).items()}
    assert before == after and set(after.values()) == {AttnProcessor2_0}


def test_strategies_replace_the_map_as_documented(unet):
    attn = dict(unet.named_modules())["mid_block.attentions.0"]
    h = torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(1))
    tokens = pag.to_tokens(attn, h)
    with torch.no_grad():
        value = attn.to_v(tokens)
        assert torch.allclose(pag.attention_output(attn, tokens, "identity"), value)
        assert torch.allclose(pag.attention_output(attn, tokens, "uniform"),
                              value.mean(1, keepdim=True).expand_as(value), atol=1e-6)
        plain = pag.self_attention_block(attn, h)
        assert torch.allclose(plain, AttnProcessor2_0()(attn, h), atol=1e-5)
        v1 = pag.self_attention_block(attn, h, "perturbed_v")
        v2 = pag.self_attention_block(attn, h, "perturbed_v")
        assert torch.equal(v1, v2) and (v1 - plain).abs().mean() > 1e-3  # seeded, and a real perturbation


def test_guidance_formulas():
    gen = torch.Generator().manual_seed(2)
    a, b, c = (torch.randn(3, 1, 4, 4, generator=gen) for _ in range(3))
    assert torch.equal(pag.pag_combination(a, b, 0.0), a)
    assert torch.allclose(pag.pag_combination(a, b, 2.0), 3 * a - 2 * b)
    assert torch.allclose(pag.pag_cfg_combination(a, b, c, 1.0, 0.0), b)  # w = 1: the conditional model
    assert torch.allclose(pag.pag_cfg_combination(a, b, c, 3.0, 0.5), a + 3 * (b - a) + 0.5 * (b - c))
    # CFG is PAG whose "perturbation" drops the label: eps_hat = eps(x, null)
    assert torch.allclose(pag.pag_cfg_combination(a, b, c, 1.0 + 2.0, 0.0), pag.pag_combination(b, a, 2.0))


def test_pag_predictions_use_one_forward_pass(unet, batch):
    x, t, _ = batch
    calls = []
    hook = unet.register_forward_hook(lambda module, args, kwargs_out: calls.append(len(args[0])))
    try:
        eps, eps_hat = pag.pag_predictions(unet, x, t)
        pag.pag_cfg_predictions(unet, x, t, torch.tensor([1, 2, 3, 4]))
    finally:
        hook.remove()
    assert calls == [8, 12]
    with torch.no_grad():
        assert (eps - unet(x, t, class_labels=torch.full((4,), 10)).sample).abs().max() < 1e-5


def test_sampler_without_guidance_is_plain_ddim_and_stays_in_range(unet):
    from course import ddim
    from course.schedules import linear_schedule

    labels = torch.arange(4)
    plain = pag.pag_sampler(0, steps=3, unet=unet)(labels, seed=5)
    x_T = torch.randn((4, 1, 16, 16), generator=torch.Generator().manual_seed(5))
    reference, _ = ddim.ddim_sample(lambda x, t: unet(x, t, class_labels=torch.full((4,), 10)).sample,
                                        linear_schedule(), (4, 1, 16, 16), steps=3, x_T=x_T, progress=False)
    assert torch.allclose(plain, reference.clamp(-1, 1), atol=1e-5)
    guided = pag.pag_sampler(2.0, ("mid",), steps=3, unet=unet, batch_size=2)(labels, seed=5)
    assert guided.shape == (4, 1, 16, 16) and guided.abs().max() <= 1
    assert (guided - plain).abs().mean() > 1e-3
    for strategy in pag.STRATEGIES[1:]:
        assert pag.pag_sampler(1.0, steps=2, strategy=strategy, unet=unet)(labels[:2], 0).shape == (2, 1, 16, 16)
    both = pag.pag_sampler(1.0, steps=2, w=2.0, unet=unet)(labels[:2], 0)
    assert both.shape == (2, 1, 16, 16)


def test_bad_inputs_raise_clear_errors(unet, batch):
    x, t, _ = batch
    with pytest.raises(ValueError, match="unknown layer 'up.8x8'"):
        pag.pag_sampler(1.0, ("up.8x8",), unet=unet)
    with pytest.raises(ValueError, match="strategy must be one of"):
        pag.pag_sampler(1.0, strategy="dropout", unet=unet)
    with pytest.raises(ValueError, match="perturbs the UNet's input"):
        pag.PerturbedSelfAttnProcessor("noised_input")
    with pytest.raises(ValueError, match="labels but the batch has"):
        pag.pag_predictions(unet, x, t, labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="same shape"):
        pag.pag_combination(torch.zeros(2, 3), torch.zeros(3, 2), 1.0)
    with pytest.raises(ValueError, match="floating-point"):
        pag.pag_predictions(unet, x.long(), t)


def test_widget_reacts_and_caches(unet):
    explorer = widgets.PAGExplorer(unet, n=4, steps=2, scales=(0, 1, 3), precompute=False)
    first = explorer.image.value
    explorer.scale.value = 3.0
    assert explorer.image.value != first and "s = 3" in explorer.readout.value
    explorer.layers.value = "all three"
    assert len(explorer.pngs) == 3 and len(explorer.latencies) == 3
    explorer.scale.value = 0.0  # s = 0 ignores the layers: the first image, from the cache
    assert explorer.image.value == first and len(explorer.latencies) == 3
    explorer.layers.value = "mid"
    explorer.scale.value = 3.0
    assert len(explorer.latencies) == 3  # seen before
    precomputed = widgets.PAGExplorer(unet, n=2, steps=2, scales=(0, 1))
    precomputed.scale.value = 1.0
    assert precomputed.latencies == [] and len(precomputed.pngs) == 2


# ---------------------------------------------------------------- the checkers, with right and wrong answers

def _identity_block(attn, h):
    return pag.self_attention_block(attn, h, "identity")


def _tokens_of(attn, h, norm=True):
    tokens = h.flatten(2).transpose(1, 2)
    if norm and attn.group_norm is not None:
        tokens = attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2)
    return tokens


def _finish(attn, out, h, residual=True, project=True, rescale=True):
    if project:
        out = attn.to_out[1](attn.to_out[0](out))
    out = out.transpose(1, 2).reshape(h.shape)
    if residual and attn.residual_connection:
        out = out + h
    return out / attn.rescale_output_factor if rescale else out


WRONG_PSA = {
    "ordinary attention": (lambda attn, h: AttnProcessor2_0()(attn, h), "ordinary attention"),
    "no residual": (lambda attn, h: _finish(attn, attn.to_v(_tokens_of(attn, h)), h, residual=False),
                    "residual is missing"),
    "no group norm": (lambda attn, h: _finish(attn, attn.to_v(_tokens_of(attn, h, norm=False)), h),
                      "attn.group_norm"),
    "no output projection": (lambda attn, h: _finish(attn, attn.to_v(_tokens_of(attn, h)), h, project=False),
                             "output projection is missing"),
    "no rescale": (lambda attn, h: _finish(attn, attn.to_v(_tokens_of(attn, h)), h, rescale=False),
                   "rescale_output_factor"),
    "uniform map": (lambda attn, h: pag.self_attention_block(attn, h, "uniform"), "differs from the reference"),
    "wrong shape": (lambda attn, h: attn.to_v(_tokens_of(attn, h)), "has shape"),
    "not implemented": (lambda attn, h: (_ for _ in ()).throw(NotImplementedError()), "not implemented yet"),
}


def test_perturbed_self_attention_checker_passes_the_reference(capsys):
    check_perturbed_self_attention(_identity_block)
    assert "all 4 cases pass" in capsys.readouterr().out


@pytest.mark.parametrize("mistake", list(WRONG_PSA))
def test_perturbed_self_attention_checker_rejects_wrong_answers(mistake):
    fn, message = WRONG_PSA[mistake]
    with pytest.raises(ExerciseFailed, match=message):
        check_perturbed_self_attention(fn)


def _one_batch(model, x_t, t):
    return model(torch.cat([x_t, x_t]), torch.cat([t, t])).chunk(2)


WRONG_PAG = {
    "two calls": (lambda m, x, t, s: _two_calls(m, x, t, s), "called 2 time"),
    "flipped sign": (lambda m, x, t, s: (lambda e, eh: e - s * (e - eh))(*_one_batch(m, x, t)), "sign"),
    "from eps_hat": (lambda m, x, t, s: (lambda e, eh: eh + s * (e - eh))(*_one_batch(m, x, t)), "start from"),
    "swapped halves": (lambda m, x, t, s: (lambda eh, e: e + s * (e - eh))(*_one_batch(m, x, t)), "swapped"),
    "no guidance": (lambda m, x, t, s: _one_batch(m, x, t)[0], "no guidance"),
    "t not doubled": (lambda m, x, t, s: m(torch.cat([x, x]), t), "one t per sample"),
    "scale (1 + s)": (lambda m, x, t, s: (lambda e, eh: e + (1 + s) * (e - eh))(*_one_batch(m, x, t)),
                      "differs from the reference"),
}


def _two_calls(model, x_t, t, s):
    eps = model(torch.cat([x_t, x_t]), torch.cat([t, t])).chunk(2)[0]
    eps_hat = model(torch.cat([x_t, x_t]), torch.cat([t, t])).chunk(2)[1]
    return eps + s * (eps - eps_hat)


def test_pag_epsilon_checker_passes_the_reference(capsys):
    check_pag_epsilon(pag.pag_epsilon)
    assert "all 4 cases pass" in capsys.readouterr().out


@pytest.mark.parametrize("mistake", list(WRONG_PAG))
def test_pag_epsilon_checker_rejects_wrong_answers(mistake):
    fn, message = WRONG_PAG[mistake]
    with pytest.raises(ExerciseFailed, match=message):
        check_pag_epsilon(fn)


# --------------------------------------------------------------------------- transformer self-attention (attn1)

@pytest.fixture(scope="module")
def shapes_unet():
    return ldm.load_shapes_ldm("shapes_pixel_long")


def _shapes_batch(batch=2):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 3, 32, 32, generator=gen), torch.tensor([900, 300][:batch]),
            torch.randn(batch, 6, 64, generator=gen))


def test_transformer_self_attention_paths_are_the_attn1_layers(shapes_unet):
    paths = pag.self_attention_paths(shapes_unet)
    assert paths and all(p.endswith(".attn1") for p in paths)  # attn2 (cross-attention) is not self-attention
    assert {p.split(".attentions")[0] for p in paths} == {"down_blocks.1", "down_blocks.2", "mid_block",
                                                        "up_blocks.0", "up_blocks.1"}


@pytest.mark.parametrize("which", ["first", "all"])
def test_identity_processor_matches_diffusers_on_transformer_attn1(shapes_unet, which):
    """Tokens (B, N, C) at 16x16 and 8x8: the same perturbed pass as PAGIdentitySelfAttnProcessor2_0."""
    x, t, context = _shapes_batch()
    paths = pag.self_attention_paths(shapes_unet)
    layers = paths[:1] if which == "first" else paths
    args = (torch.cat([x, x]), t.repeat(2))
    with torch.no_grad():
        plain = shapes_unet(x, t, encoder_hidden_states=context).sample
        with pag.perturbed_attention(shapes_unet, layers, "identity", chunks=2):
            ours = shapes_unet(*args, encoder_hidden_states=context.repeat(2, 1, 1)).sample
        with pag.perturbed_attention(shapes_unet, layers, processor=PAGIdentitySelfAttnProcessor2_0()):
            theirs = shapes_unet(*args, encoder_hidden_states=context.repeat(2, 1, 1)).sample
    assert (ours[2:] - theirs[2:]).abs().max() < 1e-5
    assert (ours[:2] - plain).abs().max() < 1e-5
    assert (ours[2:] - plain).abs().mean() > 1e-3
    for module in pag.attention_modules(shapes_unet, layers).values():  # restored afterwards
        assert isinstance(module.processor, AttnProcessor2_0)


def test_every_strategy_runs_on_tokens(shapes_unet):
    module = next(iter(pag.attention_modules(shapes_unet, pag.self_attention_paths(shapes_unet)[:1]).values()))
    tokens = torch.randn(2, 256, module.to_q.in_features, generator=torch.Generator().manual_seed(1))
    plain = AttnProcessor2_0()(module, tokens)
    assert (pag.self_attention_block(module, tokens) - plain).abs().max() < 1e-5
    for strategy in pag.ATTENTION_STRATEGIES:
        out = pag.PerturbedSelfAttnProcessor(strategy, chunks=1)(module, tokens)
        assert out.shape == tokens.shape and (out - plain).abs().mean() > 1e-4


def test_layers_are_matched_by_exact_name():
    """diffusers' pag_applied_layers="blocks.1" is a pattern that also hits blocks.10; a name here is one module."""
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([Attention(query_dim=8, heads=2, dim_head=4) for _ in range(11)])
    assert list(pag.attention_modules(model, ("blocks.1",))) == ["blocks.1"]
    assert list(pag.attention_modules(model, ("blocks.10", "blocks.1"))) == ["blocks.10", "blocks.1"]
    with pytest.raises(ValueError, match="unknown layer 'blocks'"):
        pag.attention_modules(model, ("blocks",))
    with pytest.raises(ValueError, match="unknown layer 'blocks.1.to_q'"):
        pag.attention_modules(model, ("blocks.1.to_q",))


def test_cross_attention_is_refused(shapes_unet):
    cross = next(m for p, m in shapes_unet.named_modules() if p.endswith("attn2"))
    with pytest.raises(ValueError, match="not cross-attention"):
        pag.PerturbedSelfAttnProcessor()(cross, torch.zeros(2, 4, 32), encoder_hidden_states=torch.zeros(2, 6, 64))
    with pytest.raises(ValueError, match="unknown layer"):
        pag.attention_modules(shapes_unet, ("down_blocks.1.attentions.0.transformer_blocks.0.attn2",))
