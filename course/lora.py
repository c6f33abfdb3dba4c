"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") for the digits UNet.

A frozen weight W (d_out x d_in) gets a trainable low-rank update (eq. 3 of the paper):

    h = W x + b + (alpha / r) B A x,      A: r x d_in,  B: d_out x r,  r << min(d_in, d_out).

A starts random (Kaiming-uniform, as in nn.Linear and peft), B starts at zero, so Delta W = B A = 0 and the
adapted model equals the base model at step 0 (the idea ControlNet's zero convolutions share). ``scale`` blends
base (0) and adapted (1) behaviour; ``merge`` folds scale * (alpha / r) B A into W so inference costs nothing
extra, and ``unmerge`` takes it out again. The names (``lora_A``, ``lora_B``, ``scaling``, ``to_q``...) follow
peft, so tests/test_lora.py can compare the two on the same layer with the same weights.

Also here: injecting LoRA into chosen Linear layers of a diffusers UNet, the fine-tuning loop shared by LoRA
and full fine-tuning, the new concept (bold digits: a stroke style the base model never saw), the harness
that scores an adapted model on the new style and on the old digits, and the scale-slider widget.
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import ddim, ddpm, fid, fitting, validate
from .datasets import digits
from .models import NULL_LABEL, NUM_DIGIT_CLASSES
from .schedules import get_schedule

ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections, named as in diffusers
# The digits UNet has attention only at 4x4: adapting it alone cannot reach the 16x16 strokes. Each ResNet block's
# time_emb_proj (a Linear from the time + class embedding to a per-channel shift) sits at every resolution.
DEFAULT_TARGETS = ATTENTION_TARGETS + ("time_emb_proj",)


# --------------------------------------------------------------------------- the layer

class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-r update: y = W x + b + scale * (alpha / r) B (A x)."""

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        r = validate.positive_int("r", r)
        if r > min(base.in_features, base.out_features):
            raise ValueError(f"r = {r} is larger than the layer ({base.out_features} x {base.in_features}): "
                             f"a low-rank update needs r <= {min(base.in_features, base.out_features)}")
        alpha = float(r if alpha is None else alpha)
        if not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be a positive number, got {alpha}")
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)  # nn.Linear's and peft's init
        self._scale = 1.0
        self.merged_scale: float | None = None  # the scale folded into base.weight, None when unmerged

    # diffusers (and anyone else) may read the wrapped layer's attributes
    in_features = property(lambda self: self.base.in_features)
    out_features = property(lambda self: self.base.out_features)
    weight = property(lambda self: self.base.weight)
    bias = property(lambda self: self.base.bias)

    @property
    def merged(self) -> bool:
        return self.merged_scale is not None

    @property
    def scale(self) -> float:
        return self._scale

    @scale.setter
    def scale(self, value: float):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"scale must be a finite number, got {value}")
        if self.merged and value != self.merged_scale:
            raise RuntimeError("this LoRA layer is merged: unmerge() before changing its scale")
        self._scale = value

    def delta_weight(self) -> torch.Tensor:
        """Delta W = (alpha / r) B A, of the shape of W (scale not included)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        if self.merged or self._scale == 0:
            return result
        # the same order of operations as peft's lora.Linear: base, then B(A x) * scaling
        return result + F.linear(F.linear(x, self.lora_A), self.lora_B) * (self.scaling * self._scale)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + scale * Delta W: one matrix, no extra cost per call."""
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged")
        self.base.weight += self._scale * self.delta_weight()
        self.merged_scale = self._scale

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - scale * Delta W: the base weight back (up to float rounding)."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged")
        self.base.weight -= self.merged_scale * self.delta_weight()
        self.merged_scale = None

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scale={self._scale:g}, merged={self.merged}"


def merge_weight(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, alpha: float,
                 scale: float = 1.0) -> torch.Tensor:
    """W + scale * (alpha / r) B A as a new tensor (r = lora_A.shape[0]); notebook 10's exercise 2."""
    weight, lora_A, lora_B = (validate.floating(n, v) for n, v in
                              (("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B)))
    r = lora_A.shape[0]
    if lora_A.shape[1] != weight.shape[1] or lora_B.shape != (weight.shape[0], r):
        raise ValueError(f"for W of shape {tuple(weight.shape)} A must be (r, {weight.shape[1]}) and B "
                         f"({weight.shape[0]}, r); got A {tuple(lora_A.shape)}, B {tuple(lora_B.shape)}")
    return weight + (lora_B @ lora_A) * (alpha / r * scale)


# --------------------------------------------------------------------------- a whole model

def _matches(name: str, targets) -> bool:
    return any(name == target or name.endswith("." + target) for target in targets)


def inject_lora(model: nn.Module, r: int = 4, alpha: float | None = None, targets=DEFAULT_TARGETS,
                seed: int = 0) -> list[str]:
    """Replace every nn.Linear whose name ends with one of ``targets`` by a LoRALinear, in place; freeze the rest.

    Names match as in peft's ``target_modules`` ("to_q" matches "mid_block.attentions.0.to_q"). Returns the names
    of the wrapped layers. Only the LoRA A and B matrices are trainable afterwards.
    """
    if isinstance(targets, str):
        targets = (targets,)
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("this model already has LoRA layers: inject into a fresh copy (copy.deepcopy(base))")
    chosen = [(name, module) for name, module in model.named_modules() if name and _matches(name, targets)]
    if not chosen:
        raise ValueError(f"no module of the model is named like {list(targets)}; Linear layers it has: "
                         f"{[n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:8]}...")
    for name, module in chosen:
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{name} is a {type(module).__name__}; this workbook's LoRA wraps nn.Linear only")
    model.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, r=r, alpha=alpha, generator=gen))
    return [name for name, _ in chosen]


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_layers_or_fail(model: nn.Module) -> dict[str, LoRALinear]:
    """``lora_layers``, or a ValueError that says to inject LoRA first."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers: call inject_lora(model, r) first")
    return layers


def set_lora_scale(model: nn.Module, scale: float) -> None:
    """0 = the base model, 1 = the adapted one, in between a blend (and beyond 1, an exaggeration)."""
    for layer in lora_layers_or_fail(model).values():
        layer.scale = scale


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers_or_fail(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers_or_fail(model).values():
        layer.unmerge()


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter: the A and B matrices (what one would ship as a LoRA file)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if ".lora_" in name}


def count_parameters(model: nn.Module) -> dict:
    """{"trainable": ..., "total": ..., "fraction": trainable / total}."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "fraction": trainable / total}


def lora_parameter_count(d_in: int, d_out: int, r: int) -> int:
    """r (d_in + d_out) for one layer, against d_in d_out for the full matrix."""
    return r * (d_in + d_out)


# --------------------------------------------------------------------------- the new concept

def bold(images: torch.Tensor) -> torch.Tensor:
    """Thicken the strokes: a 3x3 dilation (the brightest pixel of each 3x3 neighbourhood), in [-1, 1].

    Every stroke grows by one pixel on each side: a style that none of the training digits has, yet the digit
    classifier still reads most bold digits right, so class accuracy keeps its meaning on them.
    """
    images = validate.floating("images", images)
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    return F.max_pool2d(images, 3, stride=1, padding=1).contiguous()


def bold_digits(split: str = "train", per_class: int | None = None, seed: int = 0):
    """The new concept: bold versions of ``datasets.digits(split)``, with the same labels and the same split.

    ``per_class`` keeps a small, class-balanced, seeded subset (a few images per class, like a personalisation
    set); None keeps all of them. The test split is never trained on.
    """
    images, labels = digits(split)
    if per_class is not None:
        validate.positive_int("per_class", per_class)
        gen = torch.Generator().manual_seed(seed)
        keep = []
        for digit in range(NUM_DIGIT_CLASSES):
            idx = torch.nonzero(labels == digit).flatten()
            if per_class > len(idx):
                raise ValueError(f"per_class = {per_class} but the {split} split has {len(idx)} images of {digit}")
            keep.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
        keep = torch.cat(keep).sort().values
        images, labels = images[keep], labels[keep]
    return bold(images), labels


def framed(images: torch.Tensor) -> torch.Tensor:
    """The new concept of the forgetting test: a one-pixel white frame around the image, in [-1, 1].

    Sharp and legible at 16x16 (unlike a thickened stroke, which blurs into a blob), and measurable: see
    ``frame_score``. The digit inside is left as it was.
    """
    images = validate.floating("images", images)
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    out = images.clone()
    out[..., 0, :] = out[..., -1, :] = out[..., :, 0] = out[..., :, -1] = 1.0
    return out


def frame_score(images: torch.Tensor) -> torch.Tensor:
    """Per image: the mean brightness of the outermost ring of pixels, mapped to [0, 1]. A framed image scores
    1; the real digits score about 0.15 (a few strokes touch the edge)."""
    images = validate.floating("images", images)
    if images.dim() != 4 or min(images.shape[-2:]) < 3:
        raise ValueError(f"images must have shape (N, C, H, W) with H, W >= 3, got {tuple(images.shape)}")
    border = torch.ones(images.shape[-2:], dtype=torch.bool)
    border[1:-1, 1:-1] = False
    return ((images.clamp(-1, 1)[..., border] + 1) / 2).flatten(1).mean(1)


IDENTIFIER_LABEL = NUM_DIGIT_CLASSES + 1  # 11: after the ten digits and the null label, a label the base never saw


def with_identifier(base: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of the class-conditional UNet with one more class label, ``IDENTIFIER_LABEL``: DreamBooth's
    rare identifier ("a [V] dog"). Its embedding is a random vector of the digit embeddings' mean length (seeded):
    an input the model has never been trained on, which fine-tuning binds to the new concept."""
    model = copy.deepcopy(base)
    old = model.class_embedding
    if not isinstance(old, nn.Embedding) or old.num_embeddings != NUM_DIGIT_CLASSES + 1:
        raise ValueError(f"expected the digits UNet's class embedding of {NUM_DIGIT_CLASSES + 1} labels, got {old}")
    new = nn.Embedding(old.num_embeddings + 1, old.embedding_dim)
    with torch.no_grad():
        new.weight[:-1] = old.weight
        direction = torch.randn(old.embedding_dim, generator=torch.Generator().manual_seed(seed))
        new.weight[-1] = direction / direction.norm() * old.weight[:NUM_DIGIT_CLASSES].norm(dim=1).mean()
    new.requires_grad_(old.weight.requires_grad)
    model.class_embedding = new
    return model


def concept_digits(classes=(3, 5, 8), per_class: int = 5, seed: int = 0):
    """The instance set of the forgetting test: ``per_class`` framed training digits of each of ``classes``
    (seeded), all labelled ``IDENTIFIER_LABEL``. Returns (images, identifier labels, the digits they show)."""
    images, labels = digits("train")
    per_class = validate.positive_int("per_class", per_class)
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for digit in classes:
        if not 0 <= int(digit) < NUM_DIGIT_CLASSES:
            raise ValueError(f"classes must be digits 0-9, got {digit}")
        idx = torch.nonzero(labels == int(digit)).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    keep = torch.cat(keep)
    return framed(images[keep]), torch.full((len(keep),), IDENTIFIER_LABEL), labels[keep]


def optimizer_state_bytes(model: nn.Module, optimizer: str = "adamw") -> dict:
    """Measured, not computed: the bytes of the optimiser's state (AdamW: exp_avg and exp_avg_sq per trainable
    weight) after one step on a copy of ``model``, and of the gradients, beside the bytes of all the weights."""
    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter of the model requires grad")
    opt = fitting.OPTIMIZERS[optimizer](params, lr=0.0)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    state = sum(v.nbytes for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    return {"optimizer_state_bytes": state, "gradient_bytes": sum(p.grad.nbytes for p in params),
            "weight_bytes": sum(p.nbytes for p in model.parameters())}


# --------------------------------------------------------------------------- fine-tuning

def fine_tune(unet: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int = 300, batch_size: int = 16,
              lr: float = 1e-3, seed: int = 0, label_dropout: float = 0.15, desc: str = "fine-tuning",
              progress: bool = True, prior=None, prior_weight: float = 1.0) -> dict:
    """L_simple (Ho et al. eq. 14) on (images, labels), updating only the parameters that require grad.

    The same loop serves LoRA (only A and B are trainable) and full fine-tuning (everything is): AdamW, no weight
    decay, a constant learning rate, the base recipe's label dropout so the null label keeps working.
    ``prior = (prior_images, prior_labels)`` adds DreamBooth's prior-preservation term (Ruiz et al. 2023, eq. 2):
    each step also draws ``batch_size`` of these (samples of the frozen base model, with the labels they were
    drawn for) and adds ``prior_weight`` times their L_simple, so the model keeps drawing what it drew before.
    Returns {"losses": per-step losses, "seconds": wall time, **count_parameters(unet)}.
    """
    images, labels = validate.floating("images", images), validate.as_tensor("labels", labels).long()
    steps, batch_size = validate.positive_int("steps", steps), validate.positive_int("batch_size", batch_size)
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} and {len(labels)}")
    if prior is not None:
        prior_images, prior_labels = validate.floating("prior images", prior[0]), prior[1].long()
        if len(prior_images) != len(prior_labels) or prior_images.shape[1:] != images.shape[1:]:
            raise ValueError(f"prior must be (images, labels) of the training images' shape {tuple(images.shape[1:])}"
                             f", one label each; got {tuple(prior_images.shape)} and {tuple(prior_labels.shape)}")
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter of the model requires grad: inject LoRA, or unfreeze it for full fine-tuning")
    schedule = get_schedule("linear")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    unet.train()
    start = time.perf_counter()

    def l_simple(x_0, y):
        y = y.clone()
        y[torch.rand(len(y), generator=gen) < label_dropout] = NULL_LABEL
        return ddpm.random_l_simple(lambda x, t: unet(x, t, class_labels=y).sample, schedule, x_0, gen)

    def batch_loss(step):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        loss = l_simple(images[idx], labels[idx])
        if prior is None:
            return loss
        idx = torch.randint(0, len(prior_images), (batch_size,), generator=gen)
        prior_loss = l_simple(prior_images[idx], prior_labels[idx])
        return loss + prior_weight * prior_loss, {"prior": f"{prior_loss.item():.4f}"}

    history = fitting.fit(params, batch_loss, steps, lr, desc=desc, progress=progress)
    seconds = time.perf_counter() - start
    unet.eval()
    return {"losses": history, "seconds": seconds, **count_parameters(unet)}


def lora_copy(base: nn.Module, r: int, alpha: float | None = None, targets=DEFAULT_TARGETS,
              seed: int = 0) -> nn.Module:
    """A deep copy of the base model with LoRA injected (the base itself stays untouched)."""
    model = copy.deepcopy(base)
    inject_lora(model, r=r, alpha=alpha, targets=targets, seed=seed)
    return model


def full_copy(base: nn.Module) -> nn.Module:
    """A deep copy of the base model with every parameter trainable: full fine-tuning."""
    return copy.deepcopy(base).requires_grad_(True)


# --------------------------------------------------------------------------- sampling and scoring

@torch.no_grad()
def sample_digits(unet: nn.Module, labels: torch.Tensor, seed: int = 0, steps: int = 10,
                  x_T: torch.Tensor | None = None, batch_size: int = 250, progress: bool = False) -> torch.Tensor:
    """Class-conditional DDIM samples (eta = 0, ``steps`` trailing steps), clamped to [-1, 1]."""
    unet.eval()
    return ddim.sample_in_batches(lambda y: (lambda x, t: unet(x, t, class_labels=y).sample), labels,
                                  get_schedule("linear"), steps, seed=seed, x_T=x_T, batch_size=batch_size,
                                  progress=progress)


@torch.no_grad()
def score_forgetting(unet: nn.Module, base_samples: torch.Tensor | None = None, per_class: int = 50,
                     identifier_n: int = 100, seed: int = 0, steps: int = 10, network=None) -> dict:
    """The forgetting test: what happens to the labels fine-tuning never showed (the ten digits) and whether the
    identifier learnt the concept.

    Untouched classes: ``per_class`` samples of each digit 0-9 from fixed noise (``seed``): class accuracy and FID
    against the held-out digits (course.fid.evaluate, with its floor), the frame score (does the concept leak into
    them), and, given the base model's samples from the same noise, the mean absolute pixel change from them.
    Identifier: ``identifier_n`` samples of IDENTIFIER_LABEL (if the model has it): their frame score.
    """
    network = network or fid.feature_network()
    labels = torch.arange(NUM_DIGIT_CLASSES).repeat_interleave(per_class)
    samples = sample_digits(unet, labels, seed=seed, steps=steps)
    report = fid.evaluate(samples, labels, seed=seed, network=network)
    out = {"n": len(samples), "class_accuracy": report["class_accuracy"], "fid": report["fid"],
           "fid_floor": report["fid_floor"], "leak_frame_score": frame_score(samples).mean().item(),
           "samples": samples}
    if base_samples is not None:
        out["pixel_change"] = (samples - base_samples).abs().mean().item() / 2  # in units of the [0, 1] range
    if unet.class_embedding.num_embeddings > IDENTIFIER_LABEL:
        concept = sample_digits(unet, torch.full((identifier_n,), IDENTIFIER_LABEL), seed=seed + 1, steps=steps)
        out["identifier_frame_score"] = frame_score(concept).mean().item()
        out["identifier_samples"] = concept
    return out


def score_adaptation(unet: nn.Module, n: int = 200, seed: int = 0, steps: int = 10, network=None,
                     progress: bool = False) -> dict:
    """The harness for an adapted model: one class-balanced set of samples, scored twice.

    new_fid: FID against the held-out bold digits (quality on the new data); new_fid_floor: real bold training
    digits against the same held-out ones, at the same n. old_fid, class_accuracy: ``fid.evaluate`` against the
    original held-out digits (how far the model has moved from them; whether it still draws the asked-for class).
    """
    network = network or fid.feature_network()
    labels = torch.arange(NUM_DIGIT_CLASSES).repeat(-(-n // NUM_DIGIT_CLASSES))[:n]
    samples = sample_digits(unet, labels, seed=seed, steps=steps, progress=progress)
    new_test, _ = bold_digits("test")
    new_train, _ = bold_digits("train")
    new_stats = fid.feature_statistics(fid.image_features(new_test, network))
    old = fid.evaluate(samples, labels, seed=seed, network=network)
    return {"n": n, "new_fid": fid.fid_to_statistics(samples, new_stats, network),
            "new_fid_floor": fid.fid_to_statistics(fid.floor_batch(new_train, n, seed), new_stats, network),
            "old_fid": old["fid"], "old_fid_floor": old["fid_floor"], "class_accuracy": old["class_accuracy"],
            "diversity": old["diversity"], "samples": samples, "labels": labels}
