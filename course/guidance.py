"""Classifier guidance and classifier-free guidance (notebook 06).

Classifier guidance (Dhariwal and Nichol 2021, Algorithm 2 in eps form): a classifier p_phi(y | x_t, t) trained on
noisy images steers an eps-model towards class y,

    eps_tilde(x_t) = eps(x_t) - w sqrt(1 - alpha_bar_t) grad_x log p_phi(y | x_t, t).

Classifier-free guidance (Ho and Salimans 2022, eq. 6): one model trained with label dropout predicts both
eps(x_t, c) and eps(x_t, null), and

    eps_tilde = (1 + w) eps(x_t, c) - w eps(x_t, null) = eps(x_t, null) + lambda (eps(x_t, c) - eps(x_t, null)),

with lambda = 1 + w (the form diffusers calls ``guidance_scale``). By Bayes, p(c | x_t) is proportional to
p(x_t | c) / p(x_t), so eps(x_t, c) - eps(x_t, null) = -sqrt(1 - alpha_bar_t) grad log p(c | x_t): CFG is
classifier guidance with the model's own implicit classifier. A negative label replaces null by a label to avoid.

w = 0 (lambda = 1) is the plain conditional model. Both predictions come out of ONE forward pass on a batch of
twice the size, as diffusers' pipelines do.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import ddim, fid, validate
from .datasets import GaussianMixture2D
from .models import NULL_LABEL, load_digits_unet, load_noisy_classifier
from .schedules import NoiseSchedule, linear_schedule
from .sde import log_prob_grad


# --------------------------------------------------------------------------- the CFG combination

def cfg_combine(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w) -> torch.Tensor:
    """(1 + w) eps(x_t, c) - w eps(x_t, null): Ho and Salimans eq. 6. w = 0 is the conditional model.

    ``w`` is a number or a (B,) tensor of per-sample scales.
    """
    eps_cond, eps_uncond = validate.floating("eps_cond", eps_cond), validate.floating("eps_uncond", eps_uncond)
    validate.same_shape("eps_cond", eps_cond, "eps_uncond", eps_uncond)
    w = _scale("w", w, eps_cond)
    return (1 + w) * eps_cond - w * eps_uncond


def cfg_combine_lambda(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, lam) -> torch.Tensor:
    """eps(x_t, null) + lambda (eps(x_t, c) - eps(x_t, null)): inter- (lambda < 1) or extrapolation (lambda > 1).

    The same as ``cfg_combine`` with lambda = 1 + w; diffusers' ``guidance_scale`` is this lambda.
    """
    eps_cond, eps_uncond = validate.floating("eps_cond", eps_cond), validate.floating("eps_uncond", eps_uncond)
    validate.same_shape("eps_cond", eps_cond, "eps_uncond", eps_uncond)
    lam = _scale("lam", lam, eps_cond)
    return eps_uncond + lam * (eps_cond - eps_uncond)


def _scale(name: str, value, like: torch.Tensor) -> torch.Tensor:
    """A guidance scale as a tensor that broadcasts against ``like``: a number, or one value per sample."""
    value = validate.as_tensor(name, value)
    if value.dtype == torch.bool or not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must be a number or a tensor of numbers, got dtype {value.dtype}")
    if value.dim() == 0:
        return value.to(like.dtype)
    if value.shape != (like.shape[0],):
        raise ValueError(f"{name} must be a number or have shape ({like.shape[0]},), one per sample, "
                         f"got shape {tuple(value.shape)}")
    return validate.broadcast_to_batch(value, like).to(like.dtype)


# --------------------------------------------------------------------------- labels

def as_labels(labels, batch: int | None = None, name: str = "labels") -> torch.Tensor:
    """Class labels as a (B,) long tensor in 0..NULL_LABEL; None means the null label, an int is repeated."""
    if labels is None:
        if batch is None:
            raise ValueError(f"{name}: give the batch size when the label is None (the null label)")
        return torch.full((batch,), NULL_LABEL, dtype=torch.long)
    labels = validate.as_tensor(name, labels)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels 0..{NULL_LABEL}, got dtype {labels.dtype}")
    labels = labels.long().reshape(-1) if labels.dim() == 0 else labels.long()
    if labels.dim() != 1:
        raise ValueError(f"{name} must be an int or a 1-D tensor of labels, got shape {tuple(labels.shape)}")
    if batch is not None and len(labels) != batch:
        if len(labels) != 1:
            raise ValueError(f"{name} has {len(labels)} labels but the batch has {batch} samples")
        labels = labels.expand(batch)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) > NULL_LABEL):
        raise ValueError(f"{name} must lie in 0..{NULL_LABEL} ({NULL_LABEL} = the null label), "
                         f"got {int(labels[(labels < 0) | (labels > NULL_LABEL)][0])}")
    return labels


def drop_labels(labels: torch.Tensor, p: float, generator: torch.Generator | None = None,
                null_label: int = NULL_LABEL) -> torch.Tensor:
    """Label dropout for CFG training: each label becomes the null label with probability p (a new tensor).

    Ho and Salimans Algorithm 1, line 3; the workbook's digits UNet was trained with p = 0.15.
    """
    labels = validate.as_tensor("labels", labels)
    if labels.is_floating_point():
        raise ValueError(f"labels must be integer class labels, got dtype {labels.dtype}")
    if not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    dropped = labels.clone()
    dropped[torch.rand(labels.shape, generator=generator) < p] = null_label
    return dropped


# --------------------------------------------------------------------------- guided eps-models

def cfg_predictions(unet, x_t: torch.Tensor, t: torch.Tensor, labels, negative_labels=None):
    """(eps(x_t, c), eps(x_t, c_neg)) from ONE forward pass on [x_t, x_t]; c_neg is the null label by default."""
    batch = len(x_t)
    y = as_labels(labels, batch)
    y_neg = as_labels(negative_labels, batch, "negative_labels")
    t = validate.timesteps("t", t, 1000, batch)
    eps = unet(torch.cat([x_t, x_t]), torch.cat([t, t]), class_labels=torch.cat([y, y_neg])).sample
    return eps.chunk(2)


def cfg_eps_model(unet, labels, w: float, negative_labels=None) -> Callable:
    """eps_model(x_t, t) for the samplers: CFG at scale w (``cfg_combine``), conditional and null in one pass.

    ``negative_labels`` replaces the null label by a label to avoid (the negative prompt):
    (1 + w) eps(x_t, c) - w eps(x_t, c_neg). ``labels=None`` is the null label, "any digit".
    w = 0 with no negative label needs only the conditional pass, and takes it.
    """
    def eps_model(x_t, t):
        if isinstance(w, (int, float)) and w == 0:
            return unet(x_t, t, class_labels=as_labels(labels, len(x_t))).sample
        eps_cond, eps_neg = cfg_predictions(unet, x_t, t, labels, negative_labels)
        return cfg_combine(eps_cond, eps_neg, w)
    return eps_model


def classifier_log_prob_grad(classifier, x_t: torch.Tensor, t: torch.Tensor, labels) -> torch.Tensor:
    """grad_x log p_phi(y | x_t, t) for a time-dependent classifier ``classifier(x_t, t) -> logits``."""
    x_t = validate.floating("x_t", x_t)
    y = as_labels(labels, len(x_t))
    if int(y.max()) >= NULL_LABEL:
        raise ValueError("classifier guidance needs a real class 0-9 for every sample, not the null label")
    return log_prob_grad(lambda x: torch.log_softmax(classifier(x, t), dim=1), x_t, y)


def classifier_guided_eps(schedule: NoiseSchedule, eps: torch.Tensor, x_t: torch.Tensor, t, grad_log_prob,
                          w: float) -> torch.Tensor:
    """eps - w sqrt(1 - alpha_bar_t) grad_x log p_phi(y | x_t): Dhariwal and Nichol's guidance in eps form."""
    eps, x_t = validate.floating("eps", eps), validate.floating("x_t", x_t)
    grad_log_prob = validate.floating("grad_log_prob", grad_log_prob)
    validate.same_shape("eps", eps, "x_t", x_t)
    validate.same_shape("eps", eps, "grad_log_prob", grad_log_prob)
    t = validate.timesteps("t", t, schedule.T, len(x_t))
    sigma = schedule.at(torch.sqrt(1 - schedule.alpha_bar), t, x_t).to(eps.dtype)
    return eps - _scale("w", w, eps) * sigma * grad_log_prob


def classifier_guided_eps_model(eps_model: Callable, classifier, schedule: NoiseSchedule, labels,
                                w: float) -> Callable:
    """eps_model(x_t, t) guided towards ``labels`` by the gradient of a noisy classifier p_phi(y | x_t, t)."""
    def guided(x_t, t):
        eps = eps_model(x_t, t)
        if isinstance(w, (int, float)) and w == 0:
            return eps
        grad = classifier_log_prob_grad(classifier, x_t, t, labels)
        return classifier_guided_eps(schedule, eps, x_t, t, grad, w)
    return guided


# --------------------------------------------------------------------------- the tilted distribution, exactly

def mixture_component(mixture: GaussianMixture2D, c: int) -> GaussianMixture2D:
    """Component c of a 2D mixture as a one-component mixture: the exact conditional p(x | c) at every noise level."""
    return GaussianMixture2D(means=(mixture.means[c],), std=mixture.std, weights=(1.0,))


def mixture_cfg_eps_model(mixture: GaussianMixture2D, c: int, schedule: NoiseSchedule, w: float) -> Callable:
    """eps_model(x_t, t) for ``ddim.ddim_sample`` on the 2D mixture: CFG at scale w with the EXACT scores,
    (1 + w) eps(x_t, c) - w eps(x_t), where eps = -sqrt(1 - alpha_bar_t) * score of the noised density."""
    component = mixture_component(mixture, c)

    def eps_model(x_t, t):
        alpha_bar = schedule.alpha_bar[int(t[0])]
        sigma = (1 - alpha_bar).sqrt()
        eps_c = -sigma * component.score(x_t.double(), alpha_bar)
        eps_u = -sigma * mixture.score(x_t.double(), alpha_bar)
        return cfg_combine(eps_c, eps_u, w).to(x_t.dtype)
    return eps_model


def tilted_mixture_samples(mixture: GaussianMixture2D, c: int, w: float, n: int = 2000, seed: int = 0,
                           alpha_bar: float = 1.0) -> torch.Tensor:
    """n samples of the tilted density p_t(x | c) p_t(c | x)^w of the mixture noised to ``alpha_bar`` (1.0: the
    data), by importance resampling: proposals from p_t(x | c), weights p_t(c | x)^w, drawn with replacement.

    At alpha_bar = 1 this is what "guidance at scale w samples p(x | c) p(c | x)^w" would mean. It is exact in the
    limit of many proposals (here 20 n).
    """
    validate.positive_int("n", n)
    gen = torch.Generator().manual_seed(seed)
    means, var = mixture.means[c], alpha_bar * mixture.std ** 2 + (1 - alpha_bar)
    proposals = (torch.tensor(means, dtype=torch.float64) * alpha_bar ** 0.5
                 + var ** 0.5 * torch.randn(20 * n, 2, generator=gen, dtype=torch.float64))
    log_comp, _, _ = mixture.responsibilities(proposals, alpha_bar)
    log_weights = w * torch.log_softmax(log_comp, dim=1)[:, c]
    picks = torch.multinomial(torch.softmax(log_weights, 0), n, replacement=True, generator=gen)
    return proposals[picks].float()


# --------------------------------------------------------------------------- samplers for course.fid

def cfg_sampler(w: float, steps: int = 20, negative_labels=None, unet=None, eta: float = 0.0,
                batch_size: int = 250, progress: bool = False) -> Callable:
    """fn(labels, seed) -> digits in [-1, 1]: DDIM (``steps`` steps, trailing) with CFG at scale w.

    For ``course.fid.score_sampler`` and the league table. The noise x_T is drawn from ``seed`` for the whole
    batch at once, so a sample does not depend on ``batch_size``.
    """
    unet = unet if unet is not None else load_digits_unet()
    validate.positive_int("steps", steps)
    schedule = linear_schedule()

    def sample(labels, seed: int = 0):
        labels = as_labels(labels)
        negative = None if negative_labels is None else as_labels(negative_labels, len(labels), "negative_labels")
        parts = iter(range(0, len(labels), batch_size))

        def eps_model_for(batch_labels):
            start = next(parts)
            batch_negative = None if negative is None else negative[start:start + len(batch_labels)]
            return cfg_eps_model(unet, batch_labels, w, batch_negative)
        return ddim.sample_in_batches(eps_model_for, labels, schedule, steps, eta=eta, seed=seed,
                                      batch_size=batch_size, progress=progress)
    return sample


def classifier_guided_sampler(w: float, steps: int = 20, classifier=None, unet=None, base_labels=None,
                              progress: bool = False) -> Callable:
    """fn(labels, seed) -> digits: the UNet guided by the noisy classifier's gradient towards ``labels``.

    The UNet runs with the null label (the unconditional model), or with the labels when ``base_labels="class"``.
    """
    unet = unet if unet is not None else load_digits_unet()
    classifier = classifier if classifier is not None else load_noisy_classifier()
    schedule = linear_schedule()

    def sample(labels, seed: int = 0):
        labels = as_labels(labels)
        base = labels if base_labels == "class" else None
        eps_model = classifier_guided_eps_model(
            lambda x, t: unet(x, t, class_labels=as_labels(base, len(x))).sample, classifier, schedule, labels, w)
        x, _ = ddim.ddim_sample(eps_model, schedule, (len(labels), 1, 16, 16), steps=steps, seed=seed,
                                    progress=progress)
        return x.clamp(-1, 1)
    return sample


# --------------------------------------------------------------------------- scoring the trade-off

def within_class_diversity(samples: torch.Tensor, labels: torch.Tensor, network=None) -> float:
    """Mean over classes of ``fid.diversity`` within each class: the diversity that guidance trades away.

    ``fid.evaluate``'s diversity pools all classes, so it also grows when guidance pushes the classes apart;
    this one only sees how different the samples of one class are from each other.
    """
    network = network or fid.feature_network()
    labels = as_labels(labels, len(samples))
    feats = fid.image_features(samples, network)
    values = [fid.diversity(feats[labels == c]) for c in labels.unique().tolist() if int((labels == c).sum()) > 1]
    if not values:
        raise ValueError("within-class diversity needs at least two samples of some class")
    return sum(values) / len(values)


def real_within_class_diversity(labels: torch.Tensor, seed: int = 0, network=None) -> float:
    """The same figure for real training digits of the same classes (``fid.real_digit_sampler``): the baseline."""
    return within_class_diversity(fid.real_digit_sampler(as_labels(labels), seed), labels, network)


def score_guidance(sample_fn: Callable, mode: str = "fast", seed: int = 0, network=None) -> dict:
    """``fid.score_sampler`` plus the within-class diversity of the same samples, and its real-data baseline."""
    network = network or fid.feature_network()
    kept = {}

    def keep(labels, seed):
        kept["labels"], kept["samples"] = labels, sample_fn(labels, seed)
        return kept["samples"]

    report = fid.score_sampler(keep, mode=mode, seed=seed, network=network)
    report["within_class_diversity"] = within_class_diversity(kept["samples"], kept["labels"], network)
    report["real_within_class_diversity"] = real_within_class_diversity(kept["labels"], seed, network)
    report["samples"] = kept["samples"]
    return report
