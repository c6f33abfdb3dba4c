"""Notebook 08: the VAE terms, the tokenizer's handling of odd prompts, cross-attention against diffusers, the
prompt-to-prompt control (recording changes nothing; identity edits are no-ops), the widget, and both checkers
with wrong answers."""
import math
import warnings

import pytest
import torch

from course import datasets, ldm, metrics, plotting, prompt_to_prompt, widgets
from course.exercises import ExerciseFailed, check_cross_attention_layer, check_reparameterize_and_kl
from course.exercises.ldm import _cross_attention_variant, _vae_cases, kl_mistakes


# --------------------------------------------------------------------------- autoencoder terms

def test_kl_is_zero_for_the_prior_and_matches_torch_distributions():
    zeros = torch.zeros(3, 4, 2, 2)
    assert ldm.kl_to_standard_normal(zeros, zeros).item() == 0
    gen = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, generator=gen)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1).mean()
    assert torch.allclose(ldm.kl_to_standard_normal(mean, logvar), expected, atol=1e-5)


def test_vae_loss_runs_on_the_config_and_the_latent_is_8x8x4():
    torch.manual_seed(0)
    vae = ldm.build_vae()
    images = datasets.shapes(4).images
    loss, parts = ldm.vae_loss(vae, images, kl_weight=1e-5)
    assert loss.requires_grad and parts["kl"] > 0 and parts["mse"] > 0
    assert ldm.encode_mean(vae, images).shape == (4, 4, 8, 8)
    latents = 2.0 * torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    assert math.isclose(ldm.latent_scaling_factor(latents), 0.5, rel_tol=0.02)
    assert math.isclose((latents * ldm.latent_scaling_factor(latents)).std().item(), 1.0, rel_tol=1e-5)


# --------------------------------------------------------------------------- tokenizer

def test_tokenizer_handles_empty_unknown_long_and_cased_prompts():
    assert ldm.tokenize("") == [ldm.BOS, ldm.EOS] + [ldm.PAD] * (ldm.MAX_TOKENS - 2)
    assert ldm.tokens_of("A BLUE Square.") == ["<bos>", "a", "blue", "square", "<eos>"]
    with pytest.warns(UserWarning, match="unknown words \\['purple'\\]"):
        ids = ldm.tokenize("a purple circle")
    assert ids[2] == ldm.UNK
    with pytest.warns(UserWarning, match="cut"):
        assert len(ldm.tokenize("a red circle a red circle a red circle")) == ldm.MAX_TOKENS
    with pytest.raises(TypeError, match="string"):
        ldm.tokenize(3)


def test_text_to_latents_rejects_no_prompts():
    unet = ldm.build_latent_unet()
    with pytest.raises(ValueError, match="at least one prompt"):
        ldm.text_to_latents(unet, ldm.TextEncoder(), [])


# --------------------------------------------------------------------------- cross-attention

def test_reference_cross_attention_layer_equals_diffusers_attention():
    from diffusers.models.attention_processor import Attention, AttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=24, heads=1, dim_head=8, out_bias=False, residual_connection=True)
    attn.set_processor(AttnProcessor())
    feature_map, tokens = torch.randn(2, 16, 4, 4), torch.randn(2, 5, 24)
    with torch.no_grad():
        ours = ldm.cross_attention_layer(feature_map, tokens, attn.to_q.weight.T, attn.to_k.weight.T, attn.to_v.weight.T,
                                         attn.to_out[0].weight.T)
        assert torch.allclose(ours, attn(feature_map, encoder_hidden_states=tokens), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_ldm():
    torch.manual_seed(0)
    unet = ldm.build_latent_unet().eval()
    return unet, ldm.build_vae().eval(), ldm.TextEncoder().eval()


def test_recording_the_attention_changes_nothing_and_identity_edits_are_no_ops(tiny_ldm):
    unet, vae, text_encoder = tiny_ldm
    prompts = ["a red circle", "a red circle"]
    plain = ldm.text_to_image(unet, vae, text_encoder, prompts[:1], 1.0, w=2.0, steps=3, seed=0)
    recorded, control = prompt_to_prompt.sample_with_attention(unet, vae, text_encoder, prompts[:1], 1.0, w=2.0, steps=3, seed=0)
    assert torch.allclose(plain, recorded, atol=1e-4)
    assert len(control.maps) == len(prompt_to_prompt.cross_attention_layers(unet)) == 7
    first = next(iter(control.maps.values()))
    assert len(first) == 3 and torch.allclose(first[0].sum(-1), torch.ones(1, 64), atol=1e-5)  # softmax over tokens
    ones, _ = prompt_to_prompt.sample_with_attention(unet, vae, text_encoder, prompts[:1], 1.0, steps=3,
                                        token_weights={0: torch.ones(ldm.MAX_TOKENS)})
    assert torch.allclose(ones, recorded, atol=1e-4)
    same, _ = prompt_to_prompt.sample_with_attention(unet, vae, text_encoder, prompts, 1.0, steps=3, inject={1: 0})
    assert torch.allclose(same[0], same[1], atol=1e-4)
    # a real edit changes the image, and the processors are restored afterwards
    swapped, _ = prompt_to_prompt.sample_with_attention(unet, vae, text_encoder, ["a red circle", "a blue square"], 1.0, steps=3,
                                           inject={1: 0})
    free, _ = prompt_to_prompt.sample_with_attention(unet, vae, text_encoder, ["a red circle", "a blue square"], 1.0, steps=3)
    assert not torch.allclose(swapped[1], free[1], atol=1e-4)
    assert not any(type(m.processor).__name__.startswith("_Controlled") for m in prompt_to_prompt.cross_attention_layers(unet).values())
    maps = prompt_to_prompt.token_maps(control)
    assert maps.shape == (1, ldm.MAX_TOKENS, 32, 32)


def test_explorer_reacts_to_prompt_guidance_and_token_and_caches(tiny_ldm):
    unet, vae, text_encoder = tiny_ldm
    explorer = widgets.TextToImageExplorer(unet, vae, text_encoder, 1.0, n=2, steps=2)
    first_image, first_map = explorer.samples_image.value, explorer.map_image.value
    assert "a red circle" in explorer.readout.value.replace("<bos> ", "").replace(" <eos>", "")
    explorer.token.value = 0
    assert explorer.map_image.value != first_map
    explorer.prompt.value = "a purple square"
    assert "unknown words ['purple']" in explorer.readout.value and explorer.samples_image.value != first_image
    explorer.prompt.value = ""
    assert "empty prompt" in explorer.readout.value and [o[0] for o in explorer.token.options] == ["0: <bos>", "1: <eos>"]
    explorer.guidance.value = 0.0
    n_runs = len(explorer.latencies)
    explorer.prompt.value = "a red circle"
    explorer.guidance.value = 2.0
    assert explorer.samples_image.value == first_image and len(explorer.latencies) == n_runs + 1


def test_grid_png_draws_rgb_and_grey_and_rejects_other_shapes():
    assert plotting.grid_png(datasets.shapes(3).images, ncols=3)[:4] == b"\x89PNG"
    assert plotting.grid_png(torch.zeros(2, 1, 8, 8))[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="N, 1, H, W"):
        plotting.grid_png(torch.zeros(2, 2, 8, 8))


def test_shape_masks_find_the_shapes_of_real_images():
    data = datasets.shapes(100, seed=1)
    assert metrics.mask_iou(metrics.shape_masks(data.images), data.masks).mean() > 0.85


def test_clip_loss_is_lowest_for_a_diagonal_similarity():
    same = torch.eye(4, dtype=torch.bool)
    diagonal = ldm.clip_loss(torch.eye(4), torch.tensor(math.log(10.0)), same)
    shuffled = ldm.clip_loss(torch.eye(4).roll(1, 0), torch.tensor(math.log(10.0)), same)
    assert diagonal < shuffled


# --------------------------------------------------------------------------- checkers with wrong answers

def _reference_vae(mean, logvar, eps):
    return ldm.reparameterize(mean, logvar, eps), ldm.kl_to_standard_normal(mean, logvar)


def test_vae_checker_passes_the_reference():
    check_reparameterize_and_kl(_reference_vae)


@pytest.mark.parametrize("wrong, message", [
    (lambda m, l, e: (m + l.exp() * e, ldm.kl_to_standard_normal(m, l)), "exp\\(logvar / 2\\)"),
    (lambda m, l, e: (m + l * e, ldm.kl_to_standard_normal(m, l)), "log sigma\\^2"),
    (lambda m, l, e: (ldm.reparameterize(m, l, e), (0.5 * (m ** 2 + l.exp() - 1 - l)).mean()), "do not average over"),
    (lambda m, l, e: (ldm.reparameterize(m, l, e), 0.5 * (m ** 2 + l.exp() - l).flatten(1).sum(1).mean()), "-1 per"),
    (lambda m, l, e: (ldm.reparameterize(m, l, e), 0.5 * (m ** 2 + l.exp() - 1 + l).flatten(1).sum(1).mean()), "minus"),
    (lambda m, l, e: (ldm.reparameterize(m, l, e), (m ** 2 + l.exp() - 1 - l).flatten(1).sum(1).mean()), "factor 1/2"),
    (lambda m, l, e: (ldm.reparameterize(m, l, e), (0.5 * (m ** 2 + l.exp() - 1 - l)).sum()), "average over the batch"),
    (lambda m, l, e: (ldm.reparameterize(m, l, e), 0.5 * (m ** 2 + (l / 2).exp() - 1 - l).flatten(1).sum(1).mean()),
     "sigma\\^2 = exp\\(logvar\\)"),
    (lambda m, l, e: (ldm.reparameterize(m, l, e), 0.5 * (l.exp() - 1 - l).flatten(1).sum(1).mean()), "mean\\^2 term"),
    (lambda m, l, e: (ldm.reparameterize(m, l, e).detach(), ldm.kl_to_standard_normal(m, l)), "differentiable"),
    (lambda m, l, e: ldm.reparameterize(m, l, e), "pair"),
])
def test_vae_checker_rejects_wrong_answers(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_reparameterize_and_kl(wrong)


def test_vae_cases_tell_every_kl_mistake_apart():
    """Each wrong KL must differ from the reference and from every other mistake in the first case, so each gets
    its own message (with batch 2, summing over the batch and forgetting the 1/2 both give 2 KL)."""
    _, mean, logvar, _ = _vae_cases()[0]
    values = [ldm.kl_to_standard_normal(mean, logvar)] + [wrong for wrong, _ in kl_mistakes(mean, logvar)]
    for i, a in enumerate(values):
        for b in values[i + 1:]:
            assert not torch.isclose(a, b, rtol=1e-3)


def test_cross_attention_checker_passes_the_reference():
    check_cross_attention_layer(ldm.cross_attention_layer)


@pytest.mark.parametrize("kwargs, message", [
    ({"softmax_dim": -2}, "over the tokens"), ({"scaled": False}, "sqrt\\(d\\)"), ({"residual": False}, "feature_map +"),
    ({"flat_reshape": True}, "transpose"),
])
def test_cross_attention_checker_rejects_wrong_answers(kwargs, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_cross_attention_layer(lambda *args: _cross_attention_variant(*args, **kwargs))


def test_cross_attention_checker_rejects_self_attention_and_ignoring_the_text():
    def self_attention(feature_map, tokens, W_q, W_k, W_v, W_o):
        return feature_map  # never reads the text

    with pytest.raises(ExerciseFailed):
        check_cross_attention_layer(self_attention)
