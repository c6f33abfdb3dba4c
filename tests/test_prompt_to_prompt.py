"""course.prompt_to_prompt beyond recording (tests/test_ldm.py): re-weighting a word in the token states, the
attention shares, the classifier's reading of a word, the shape centroids and the word-swap measurement."""
import pytest
import torch

from course import datasets, ldm, prompt_to_prompt, widgets
from course.widgets.ldm import diverging_rgb


@pytest.fixture(scope="module")
def tiny_ldm():
    torch.manual_seed(0)
    return ldm.build_latent_unet().eval(), ldm.build_vae().eval(), ldm.TextEncoder().eval()


def test_word_states_are_the_prompt_at_one_unk_at_zero_and_causal(tiny_ldm):
    _, _, text_encoder = tiny_ldm
    prompt, word = "a green square", "green"
    states = ldm.encode_prompts(text_encoder, [prompt])
    neutral = ldm.encode_prompts(text_encoder, ["a <unk> square"], warn=False)
    assert torch.allclose(prompt_to_prompt.reweight_word_states(text_encoder, prompt, word, 1.0), states, atol=1e-6)
    assert torch.allclose(prompt_to_prompt.reweight_word_states(text_encoder, prompt, word, 0.0), neutral, atol=1e-6)
    doubled = prompt_to_prompt.reweight_word_states(text_encoder, prompt, word, 2.0)
    assert torch.allclose(doubled - states, states - neutral, atol=1e-5)
    moved = prompt_to_prompt.word_contribution(text_encoder, prompt, word)
    assert moved.shape == (ldm.MAX_TOKENS,)
    assert torch.all(moved[:2] == 0) and torch.all(moved[2:] > 0)  # causal: <bos> and "a" never see "green"


def test_word_position_and_word_probability_reject_bad_words():
    assert prompt_to_prompt.word_position("a green square", "square") == 3
    with pytest.raises(ValueError, match="not a token"):
        prompt_to_prompt.word_position("a green square", "red")
    classifier = lambda images: (torch.zeros(len(images), 3), torch.tensor([[0.0, 10.0, 0.0, 0.0]] * len(images)))
    images = torch.zeros(2, 3, 32, 32)
    assert torch.all(prompt_to_prompt.word_probability(classifier, images, "green") > 0.99)
    assert torch.allclose(prompt_to_prompt.word_probability(classifier, images, "circle"), torch.full((2,), 1 / 3))
    with pytest.raises(ValueError, match="neither a colour"):
        prompt_to_prompt.word_probability(classifier, images, "a")


def test_reweighting_at_one_is_the_plain_prompt_and_zero_changes_it(tiny_ldm):
    unet, vae, text_encoder = tiny_ldm
    z_T = prompt_to_prompt.seeded_noise(unet, [0, 1])
    plain = ldm.text_to_image(unet, vae, text_encoder, ["a green square"] * 2, 1.0, w=2.0, steps=2, z_T=z_T)
    for method in prompt_to_prompt.REWEIGHT_METHODS:
        same = prompt_to_prompt.reweight(unet, vae, text_encoder, "a green square", "green", 1.0, method, 1.0,
                                         seeds=(0, 1), steps=2)
        assert torch.allclose(same, plain, atol=1e-4), method
        removed = prompt_to_prompt.reweight(unet, vae, text_encoder, "a green square", "green", 0.0, method, 1.0,
                                            seeds=(0, 1), steps=2)
        assert not torch.allclose(removed, plain, atol=1e-4), method
    with pytest.raises(ValueError, match="method must be one of"):
        prompt_to_prompt.reweight(unet, vae, text_encoder, "a green square", "green", 0.0, "columns", 1.0)


def test_noise_per_seed_does_not_depend_on_the_batch(tiny_ldm):
    unet = tiny_ldm[0]
    assert torch.equal(prompt_to_prompt.seeded_noise(unet, [3, 5])[1], prompt_to_prompt.seeded_noise(unet, [5])[0])


def test_token_shares_sum_to_one_and_context_is_checked(tiny_ldm):
    unet, vae, text_encoder = tiny_ldm
    _, control = prompt_to_prompt.sample_with_attention(unet, vae, text_encoder, ["a red circle"] * 2, 1.0, steps=2)
    shares = prompt_to_prompt.token_shares(control)
    assert shares.shape == (2, ldm.MAX_TOKENS) and torch.allclose(shares.sum(1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="context must be"):
        prompt_to_prompt.sample_with_attention(unet, vae, text_encoder, ["a red circle"] * 2, 1.0, steps=2,
                                               context=torch.zeros(1, ldm.MAX_TOKENS, 64))
    with pytest.raises(ValueError, match="z_T has 1 samples for 2 prompts"):
        prompt_to_prompt.sample_with_attention(unet, vae, text_encoder, ["a red circle"] * 2, 1.0, steps=2,
                                               z_T=torch.zeros(1, 4, 8, 8))


def test_shape_centroids_find_a_drawn_square_and_the_centre_of_an_empty_image():
    background = torch.tensor(datasets.BACKGROUND_RGB)[:, None, None] * 2 - 1
    images = background.expand(2, 3, 32, 32).clone()
    images[0, :, 4:10, 20:30] = torch.tensor([1.0, -1.0, -1.0])[:, None, None]
    centres = prompt_to_prompt.shape_centroids(images)
    assert torch.allclose(centres[0], torch.tensor([6.5, 24.5])) and torch.allclose(centres[1], torch.tensor([15.5, 15.5]))


def test_word_swap_layout_measures_every_setting_and_a_swap_to_itself_keeps_the_layout(tiny_ldm):
    unet, vae, text_encoder = tiny_ldm
    result = prompt_to_prompt.word_swap_layout(unet, vae, text_encoder, "a red circle", ["a red circle"], 1.0, seed=0,
                                               steps=2)
    assert set(result) == set(prompt_to_prompt.SWAP_SETTINGS) | {"reference"}
    for setting in prompt_to_prompt.SWAP_SETTINGS:
        assert result[setting]["centroid_shift_px"].shape == (1,) and result[setting]["iou"].shape == (1,)
    assert result["shared noise"]["centroid_shift_px"].item() < 1e-3
    assert torch.allclose(result["shared noise"]["images"], result["reference"], atol=1e-4)


def test_map_colours_are_white_at_uniform_and_the_explorer_reports_the_shares(tiny_ldm):
    rgb = diverging_rgb(torch.tensor([-1.0, 0.0, 1.0]).reshape(3, 1, 1, 1), span=1.0)
    assert rgb.shape == (3, 3, 1, 1) and torch.all(rgb[1] > 0.9)  # white-ish at 0
    assert rgb[0, 2] > rgb[0, 0] and rgb[2, 0] > rgb[2, 2]  # blue below, red above
    unet, vae, text_encoder = tiny_ldm
    explorer = widgets.TextToImageExplorer(unet, vae, text_encoder, 1.0, n=2, steps=2)
    assert "<eos> + padding" in explorer.readout.value and "p - 1/8" in explorer.readout.value
