"""Notebook 08's text-to-image explorer: a prompt, a guidance scale, and where one token's cross-attention falls."""
from __future__ import annotations

import time
import warnings

import torch

from ..ldm import CAPTION_WORDS, MAX_TOKENS, tokens_of
from ..prompt_to_prompt import sample_with_attention, token_maps, token_shares
from ..plotting import grid_png
from . import display


def diverging_rgb(values: torch.Tensor, span: float) -> torch.Tensor:
    """(N, 1, H, W) values -> (N, 3, H, W) in [-1, 1]: blue at -span, white at 0, red at +span (matplotlib's RdBu_r)."""
    from matplotlib import colormaps

    unit = ((values / max(span, 1e-8)).clamp(-1, 1) + 1) / 2
    rgb = torch.as_tensor(colormaps["RdBu_r"](unit[:, 0].numpy())[..., :3], dtype=torch.float32)
    return rgb.permute(0, 3, 1, 2) * 2 - 1


class TextToImageExplorer:
    """Type a prompt, pick a guidance scale and a token: samples, and where that token's cross-attention falls.

    The map shows p - 1/N (N = MAX_TOKENS, a uniform softmax gives each token 1/N): red where locations read the
    token more than uniform, blue where less, on one scale for all the tokens of the prompt (the readout gives it,
    with each token's share of the attention and the share of <eos> and the padding). Each (prompt, w) is sampled once (``n`` samples from fixed noise, DDIM ``steps``) and kept, so going back
    is instant; ``latencies`` records each new setting's seconds. Unknown words become <unk> (the readout says so),
    an empty prompt means "any shape".
    """

    def __init__(self, unet, vae, text_encoder, scaling_factor: float, prompt: str = "a red circle", n: int = 4,
                 steps: int = 20, seed: int = 0, guidance=(0.0, 1.0, 2.0, 4.0)):
        import ipywidgets as widgets

        self.unet, self.vae, self.text_encoder, self.scaling_factor = unet, vae, text_encoder, scaling_factor
        self.n, self.steps = n, steps
        shape = (n, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
        self.z_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        self.cache, self.latencies = {}, []
        self.prompt = widgets.Text(value=prompt, description="prompt", continuous_update=False)
        self.guidance = widgets.SelectionSlider(options=list(guidance), value=2.0 if 2.0 in guidance else guidance[0],
                                                description="CFG w", continuous_update=False)
        self.token = widgets.Dropdown(description="token")
        self.samples_image, self.map_image = widgets.Image(format="png"), widgets.Image(format="png")
        self.readout = widgets.Label()
        self.prompt.observe(lambda change: self.show(), names="value")
        self.guidance.observe(lambda change: self.show(), names="value")
        self.token.observe(lambda change: self.show_map(), names="value")
        self.show()
        self.widget = widgets.VBox([widgets.HBox([self.prompt, self.guidance, self.token]), self.readout,
                                    widgets.HBox([self.samples_image, self.map_image])])
        display.settle()  # the warm-up's garbage is collected now, not on the first move

    def run(self, prompt: str, w: float):
        key = (prompt, float(w))
        if key not in self.cache:
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                images, control = sample_with_attention(self.unet, self.vae, self.text_encoder, [prompt] * self.n,
                                                        self.scaling_factor, w, self.steps, z_T=self.z_T)
            self.cache[key] = (images, token_maps(control), token_shares(control).mean(0))
            self.latencies.append(time.perf_counter() - start)
        return self.cache[key]

    def show(self):
        prompt = self.prompt.value
        images = self.run(prompt, self.guidance.value)[0]
        self.samples_image.value = grid_png(images, ncols=self.n)
        tokens = tokens_of(prompt)
        unknown = [w for w in prompt.lower().split() if w not in CAPTION_WORDS]
        note = f"unknown words {unknown} -> <unk>; " if unknown else ""
        note += "empty prompt: any shape, any colour; " if not prompt.strip() else ""
        self.note = note + "tokens: " + " ".join(tokens)
        options = [(f"{i}: {t}", i) for i, t in enumerate(tokens)]
        if [o[1] for o in self.token.options] != [o[1] for o in options] or \
                [o[0] for o in self.token.options] != [o[0] for o in options]:
            self.token.options = options
            self.token.value = len(tokens) - 2 if len(tokens) > 2 else 0
        self.show_map()

    def show_map(self):
        if self.token.value is None:
            return
        _, maps, shares = self.run(self.prompt.value, self.guidance.value)
        n_tokens = len(tokens_of(self.prompt.value))
        excess = maps - 1 / MAX_TOKENS
        span = excess.abs().amax().item()  # one scale for every token of this prompt
        self.map_image.value = grid_png(diverging_rgb(excess[:, self.token.value:self.token.value + 1], span),
                                        ncols=self.n)
        self.readout.value = (f"{self.note} | map: p - 1/{MAX_TOKENS}, blue -{span:.3f} .. red +{span:.3f} | "
                              f"attention share of <eos> + padding {shares[n_tokens - 1:].sum():.0%}; this token "
                              f"{shares[self.token.value]:.0%}")

    def _ipython_display_(self):
        display.show(self)
