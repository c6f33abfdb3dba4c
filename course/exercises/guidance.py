"""Checkers for notebook 06: the classifier-guided eps, label dropout for CFG training, and the CFG prediction from one
batched call (cfg_epsilon; check_cfg_combine stays for the earlier one-line version of that exercise)."""
from __future__ import annotations

import math

import torch

from .. import guidance, models
from ..schedules import get_schedule
from .core import ExerciseFailed, call_student, compare, passed


# --------------------------------------------------------------------------- exercise 1: the CFG combination

def _cfg_hint(got, eps_cond, eps_uncond, w) -> str:
    if not isinstance(got, torch.Tensor) or got.shape != eps_cond.shape or got.dtype != eps_cond.dtype:
        return ""
    if w == 0 and torch.allclose(got, eps_uncond, atol=1e-5):
        return ("\nhint: at w = 0 the answer is eps_cond (the conditional model) and you returned eps_uncond: are the "
                "two swapped, or is this the lambda form with lambda = w? The weight on eps_cond is 1 + w")
    if w != 0 and torch.allclose(got, eps_uncond + w * (eps_cond - eps_uncond), atol=1e-5):
        return ("\nhint: that is the lambda form with lambda = w. Here w = 0 must give the conditional model: "
                "the weight on eps_cond is 1 + w")
    if w != 0 and torch.allclose(got, (1 - w) * eps_cond + w * eps_uncond, atol=1e-5):
        return "\nhint: the signs are swapped: move away from eps_uncond, towards eps_cond"
    if w != 0 and torch.allclose(got, (1 + w) * eps_uncond - w * eps_cond, atol=1e-5):
        return "\nhint: eps_cond and eps_uncond are swapped"
    return ""


def check_cfg_combine(student_cfg_combine) -> None:
    """Check ``cfg_combine(eps_cond, eps_uncond, w) -> (1 + w) eps_cond - w eps_uncond``."""
    name = "cfg_combine"
    gen = torch.Generator().manual_seed(0)
    cases = 0
    for w in (0.0, 0.5, 1.0, 3.0, 7.5):
        for shape, dtype in (((4, 1, 16, 16), torch.float32), ((64, 2), torch.float64)):
            eps_cond, eps_uncond = torch.randn(shape, generator=gen, dtype=dtype), torch.randn(shape, generator=gen,
                                                                                            dtype=dtype)
            case = f"w = {w}, eps of shape {shape} and dtype {dtype}"
            got = call_student(name, student_cfg_combine, case, eps_cond.clone(), eps_uncond.clone(), w)
            compare(name, "eps_tilde", got, guidance.cfg_combine(eps_cond, eps_uncond, w),
                    case + _cfg_hint(got, eps_cond, eps_uncond, w))
            cases += 1
    # the lambda form, lambda = 1 + w, must agree
    eps_cond, eps_uncond = torch.randn(8, 1, 16, 16, generator=gen), torch.randn(8, 1, 16, 16, generator=gen)
    got = call_student(name, student_cfg_combine, "w = 2", eps_cond, eps_uncond, 2.0)
    compare(name, "eps_tilde", got, guidance.cfg_combine_lambda(eps_cond, eps_uncond, 3.0),
            "against the lambda form eps_uncond + lambda (eps_cond - eps_uncond) with lambda = 1 + w = 3")
    passed(name, cases + 1, "w = 0 (the conditional model) to 7.5, float32 and float64, the lambda form")


# --------------------------------------------------------------------------- exercise 2: the classifier-guided eps

class _ToyNoisyClassifier(torch.nn.Module):
    """A fixed, seeded, non-linear classifier(x_t, t) -> logits that depends on t, so a wrong t shows."""

    def __init__(self, shape: tuple, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        dim = int(torch.tensor(shape).prod())
        self.weight = torch.nn.Parameter(torch.randn(dim, 10, generator=gen) / dim ** 0.5)
        self.time = torch.nn.Parameter(torch.randn(16, 10, generator=gen))

    def forward(self, x_t, t):
        t = torch.as_tensor(t).reshape(-1).expand(len(x_t))
        flat = x_t.flatten(1).float()
        quadratic = 0.01 * flat.pow(2).sum(1, keepdim=True)  # so the gradient depends on x_t, not only on the class
        return torch.tanh(flat) @ self.weight + models.sinusoidal_embedding(t, 16) @ self.time + quadratic


def _classifier_reference(classifier, schedule, eps, x_t, t, labels, w):
    grad = guidance.classifier_log_prob_grad(classifier, x_t, t, labels)
    return guidance.classifier_guided_eps(schedule, eps, x_t, t, grad, w), grad


def _classifier_hint(got, classifier, schedule, eps, x_t, t, labels, w) -> str:
    if not isinstance(got, torch.Tensor) or got.shape != eps.shape or got.dtype != eps.dtype or w == 0:
        return ""
    _, grad = _classifier_reference(classifier, schedule, eps, x_t, t, labels, w)
    sigma = schedule.at(torch.sqrt(1 - schedule.alpha_bar), t, x_t).to(eps.dtype)
    got = got.detach()
    if torch.allclose(got, eps + w * sigma * grad, atol=1e-5):
        return ("\nhint: the sign: eps_tilde = eps - w sqrt(1 - alpha_bar_t) grad "
                "(the score is -eps / sqrt(1 - alpha_bar_t))")
    if torch.allclose(got, eps - w * grad, atol=1e-5):
        return "\nhint: the gradient is a score; in eps units it is multiplied by sqrt(1 - alpha_bar_t)"
    signal = schedule.at(torch.sqrt(schedule.alpha_bar), t, x_t).to(eps.dtype)
    for factor, what in [(signal, "sqrt(alpha_bar_t)"), (1 - schedule.at(schedule.alpha_bar, t, x_t).to(eps.dtype),
                                                          "1 - alpha_bar_t (no square root)")]:
        if torch.allclose(got, eps - w * factor * grad, atol=1e-5) or \
                torch.allclose(got, eps + w * factor * grad, atol=1e-5):
            return (f"\nhint: your gradient is right, but you scaled it by {what}; the score is -eps / "
                    "sqrt(1 - alpha_bar_t), so the factor is sqrt(1 - alpha_bar_t), the noise's std")
    if torch.allclose(got, eps - w * sigma * grad / len(x_t), atol=1e-5):
        return ("\nhint: the gradient is B times too small: differentiate the SUM of the log-probabilities over the "
                "batch (each sample's gradient then only depends on its own term), not the mean")
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        prob = torch.softmax(classifier(x, t), dim=1)[torch.arange(len(x)), labels].sum()
        grad_prob = torch.autograd.grad(prob, x)[0]
    if torch.allclose(got, eps - w * sigma * grad_prob, atol=1e-5):
        return "\nhint: differentiate the log-probability (log_softmax), not the probability (softmax)"
    return "\nhint: differentiate log_softmax(classifier(x_t, t))[i, y_i], summed over i, with respect to x_t"


def check_classifier_guided_eps(student_classifier_guided_eps) -> None:
    """Check ``classifier_guided_eps(eps, x_t, t, labels, classifier, w, alpha_bar)``:
    eps - w sqrt(1 - alpha_bar_t) grad_x log p_phi(y | x_t, t)."""
    name = "classifier_guided_eps"
    schedule = get_schedule("linear")
    gen = torch.Generator().manual_seed(1)
    cases = 0
    for t, w, shape in [(999, 1.0, (4, 1, 8, 8)), (500, 3.0, (6, 1, 4, 4)), (10, 2.0, (5, 2)), (0, 1.0, (3, 2)),
                        (250, 0.0, (2, 1, 4, 4)), (700, 10.0, (1, 1, 4, 4))]:
        classifier = _ToyNoisyClassifier(shape[1:], seed=t)
        x_t = torch.randn(shape, generator=gen)
        eps = torch.randn(shape, generator=gen)
        labels = torch.randint(0, 10, (shape[0],), generator=gen)
        t_batch = torch.full((shape[0],), t, dtype=torch.long)
        case = f"t = {t}, w = {w}, x_t of shape {shape}"
        got = call_student(name, student_classifier_guided_eps, case, eps.clone(), x_t.clone(), t_batch.clone(),
                           labels.clone(), classifier, w, schedule.alpha_bar.clone())
        expected, _ = _classifier_reference(classifier, schedule, eps, x_t, t_batch, labels, w)
        if isinstance(got, torch.Tensor):
            got = got.detach()
        compare(name, "eps_tilde", got, expected,
                case + _classifier_hint(got, classifier, schedule, eps, x_t, t_batch, labels, w), atol=1e-5, rtol=1e-4)
        cases += 1
    # mixed timesteps in one batch: the sqrt(1 - alpha_bar_t) factor must be per sample
    shape = (4, 1, 4, 4)
    classifier = _ToyNoisyClassifier(shape[1:], seed=7)
    x_t, eps = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    t_batch, labels = torch.tensor([0, 300, 600, 999]), torch.tensor([3, 1, 4, 1])
    case = "t = 0, 300, 600, 999 in one batch, w = 2"
    got = call_student(name, student_classifier_guided_eps, case, eps.clone(), x_t.clone(), t_batch, labels,
                       classifier, 2.0, schedule.alpha_bar.clone())
    expected, _ = _classifier_reference(classifier, schedule, eps, x_t, t_batch, labels, 2.0)
    compare(name, "eps_tilde", got.detach() if isinstance(got, torch.Tensor) else got, expected,
            case + "\nhint: index alpha_bar with each sample's t and reshape it to (B, 1, 1, 1)", t=t_batch,
            atol=1e-5, rtol=1e-4)
    passed(name, cases + 1, "t = 0 to 999, w = 0 to 10, image and 2D shapes, mixed timesteps in a batch")


# --------------------------------------------------------------------------- exercise 3: label dropout

def _z_score(count: int, n: int, p: float) -> float:
    return (count - n * p) / math.sqrt(max(n * p * (1 - p), 1e-12))


def _check_generator_used(name, student_drop_labels, base) -> None:
    """The random numbers must come from the generator: same seed, same labels; other seed, other labels;
    and the generator has advanced (an answer that seeds or uses torch's global generator fails one of these)."""
    use = ("draw the random numbers with the generator you are given (torch.rand(labels.shape, generator=generator)),"
           " not with torch's global generator")
    gen = torch.Generator().manual_seed(1)
    before = gen.get_state()
    first = call_student(name, student_drop_labels, "seed 1", base.clone(), 0.5, gen)
    if torch.equal(gen.get_state(), before):
        raise ExerciseFailed(name, f"the generator you were given was never used: {use}")
    again = call_student(name, student_drop_labels, "seed 1 again", base.clone(), 0.5, torch.Generator().manual_seed(1))
    if not torch.equal(first, again):
        raise ExerciseFailed(name, f"two calls with generators seeded alike (seed 1) dropped different labels: {use}")
    other = call_student(name, student_drop_labels, "seed 2", base.clone(), 0.5, torch.Generator().manual_seed(2))
    if torch.equal(first, other):
        raise ExerciseFailed(name, f"two calls with different generators dropped exactly the same labels: {use}")


def check_drop_labels(student_drop_labels) -> None:
    """Check ``drop_labels(labels, p_uncond, generator) -> labels`` with each label replaced by the null label
    (models.NULL_LABEL = 10) with probability p_uncond, independently: the rate is tested statistically."""
    name = "drop_labels"
    null = models.NULL_LABEL
    n = 20_000
    base = torch.arange(10).repeat(n // 10)
    cases = 0
    for p in (0.0, 0.1, 0.15, 0.5, 1.0):
        labels = base.clone()
        case = f"p_uncond = {p}, {n} labels 0-9"
        got = call_student(name, student_drop_labels, case, labels, p, torch.Generator().manual_seed(int(p * 100)))
        if not isinstance(got, torch.Tensor):
            raise ExerciseFailed(name, f"return the labels as a torch.Tensor, got {type(got).__name__}\n"
                                       f"while checking: {case}")
        if got.shape != base.shape:
            raise ExerciseFailed(name, f"the labels have shape {tuple(got.shape)}, expected {tuple(base.shape)}: "
                                       f"keep every label, replace some of them\nwhile checking: {case}")
        if got.dtype != torch.long:
            raise ExerciseFailed(name, f"the labels have dtype {got.dtype}, expected torch.int64: nn.Embedding "
                                       f"needs integer labels\nwhile checking: {case}")
        if not torch.equal(labels, base):
            raise ExerciseFailed(name, "your function changed the labels it was given (in place): work on a copy "
                                       f"(labels.clone()) so the caller's batch stays intact\nwhile checking: {case}")
        changed = got != base
        wrong_value = changed & (got != null)
        if wrong_value.any():
            i = int(wrong_value.nonzero()[0])
            raise ExerciseFailed(name, f"label {i} was {int(base[i])} and became {int(got[i])}: a dropped label must "
                                       f"become the null label {null} (models.NULL_LABEL), and the others must stay "
                                       f"as they were\nwhile checking: {case}")
        dropped = int(changed.sum())
        z = _z_score(dropped, n, p)
        expect = (f"{round(n * p)}" if p in (0.0, 1.0) else
                  f"{n * p:.0f} ± {3 * math.sqrt(n * p * (1 - p)):.0f}")
        if (p in (0.0, 1.0) and dropped != round(n * p)) or abs(z) > 5:
            hint = ("\nhint: that is the keep rate: drop where a uniform random number is below p_uncond "
                    "(torch.rand(...) < p_uncond)" if abs(dropped / n - (1 - p)) < 0.02 else "")
            raise ExerciseFailed(name, f"{dropped} of {n} labels were dropped ({dropped / n:.1%}); with p_uncond = "
                                       f"{p} expect {expect}{hint}\nwhile checking: {case}")
        if 0 < p < 1:
            per_class = torch.stack([changed[base == c].float().mean() for c in range(10)])
            if (per_class - p).abs().max() > 6 * math.sqrt(p * (1 - p) / (n / 10)):
                raise ExerciseFailed(name, f"the dropout rate depends on the class: {per_class.tolist()}; drop each "
                                           f"label independently of its value\nwhile checking: {case}")
            halves = changed.reshape(2, -1).float().mean(1)
            if (halves - p).abs().max() > 6 * math.sqrt(p * (1 - p) / (n / 2)):
                raise ExerciseFailed(name, f"the first half of the batch has dropout rate {halves[0]:.3f}, the second "
                                           f"{halves[1]:.3f}: drop at random positions, not a block of the batch"
                                           f"\nwhile checking: {case}")
        cases += 1
    _check_generator_used(name, student_drop_labels, base)
    passed(name, cases + 3, f"p_uncond = 0, 0.1, 0.15, 0.5, 1 on {n} labels: the rate within 5 sigma, only null "
                            f"labels ({null}) introduced, per class and per position, the generator used")


# --------------------------------------------------------------------------- exercise 3 (new): CFG in one pass

class _ToyConditionalUNet(torch.nn.Module):
    """A seeded stand-in for the digits UNet: unet(x, t, class_labels=y).sample, with an output that depends on x, t
    and the label (the null label included), and a record of every call's batch size and labels."""

    def __init__(self, shape: tuple, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        dim = int(torch.tensor(shape).prod())
        self.weight = torch.randn(dim, dim, generator=gen) / dim ** 0.5
        self.time = torch.randn(8, dim, generator=gen)
        self.label = torch.randn(models.NULL_LABEL + 1, dim, generator=gen)
        self.calls = []

    def forward(self, x, t, class_labels=None):
        from types import SimpleNamespace

        self.calls.append(len(x))
        t = torch.as_tensor(t)
        if class_labels is None:
            raise ValueError("the network needs class_labels=...: the labels for the conditional half and NULL "
                             "for the unconditional half")
        class_labels = torch.as_tensor(class_labels)
        if t.dim() != 1 or len(t) != len(x) or class_labels.shape != (len(x),):
            raise ValueError(f"the network takes one timestep and one label per sample: got {len(x)} samples, t of "
                             f"shape {tuple(t.shape)} and class_labels of shape {tuple(class_labels.shape)}")
        flat = x.flatten(1)
        out = torch.tanh(flat @ self.weight) + models.sinusoidal_embedding(t, 8) @ self.time + \
            self.label[class_labels.long()]
        return SimpleNamespace(sample=out.reshape(x.shape))


def _cfg_epsilon_cases(seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for w, shape in [(3.0, (4, 1, 8, 8)), (1.0, (5, 2)), (0.5, (3, 1, 4, 4)), (7.5, (2, 1, 16, 16)),
                     (0.0, (3, 1, 4, 4)), (2.0, (1, 1, 8, 8))]:
        t = torch.randint(0, 1000, (shape[0],), generator=gen)
        labels = torch.randint(0, 10, (shape[0],), generator=gen)
        cases.append((f"w = {w:g}, x_t of shape {shape}, t = {t.tolist()}, labels = {labels.tolist()}", w,
                      torch.randn(shape, generator=gen), t, labels))
    return cases


def check_cfg_epsilon(student_cfg_epsilon) -> None:
    """Check ``cfg_epsilon(unet, x_t, t, labels, w)``: (1 + w) eps(x_t, c) - w eps(x_t, null) from ONE call of
    ``unet(x, t, class_labels=y).sample`` on a batch of 2B, against guidance.cfg_predictions and cfg_combine."""
    name = "cfg_epsilon"
    null = models.NULL_LABEL
    cases = _cfg_epsilon_cases()
    for i, (case, w, x_t, t, labels) in enumerate(cases):
        unet = _ToyConditionalUNet(x_t.shape[1:], seed=i)
        with torch.no_grad():
            got = call_student(name, student_cfg_epsilon, case, unet, x_t.clone(), t.clone(), labels.clone(), w)
        calls, batch = list(unet.calls), len(x_t)
        if hasattr(got, "sample") and not isinstance(got, torch.Tensor):
            raise ExerciseFailed(name, f"you returned the network's output object; its prediction is its .sample "
                                       f"tensor\nwhile checking: {case}")
        if calls != [2 * batch] and not (w == 0 and calls == [batch]):
            raise ExerciseFailed(name, f"the network was called {len(calls)} time(s) with batch sizes {calls}; call "
                                       f"it once on {2 * batch} samples: [x_t, x_t] with t repeated, [t, t], and the "
                                       f"labels [labels, NULL, ..., NULL]\nwhile checking: {case}")
        with torch.no_grad():
            eps_cond, eps_uncond = guidance.cfg_predictions(unet, x_t, t, labels)
        expected = guidance.cfg_combine(eps_cond, eps_uncond, w)
        hint = ""
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and \
                not torch.allclose(got, expected, atol=1e-5, rtol=1e-5):
            with torch.no_grad():
                all_null = unet(x_t, t, class_labels=torch.full_like(labels, null)).sample
            for wrong, text in [
                    ((1 + w) * eps_uncond - w * eps_cond, "the halves are swapped: with the labels [labels, NULL], "
                     "the first half of the output is eps(x_t, c) and the second eps(x_t, null)"),
                    (eps_uncond + w * (eps_cond - eps_uncond), "that is the lambda form with lambda = w; here w = 0 "
                     "must give the conditional model: the weight on eps(x_t, c) is 1 + w"),
                    (eps_cond, "this is the conditional prediction alone: combine it with the unconditional one "
                     "(or, if you did, the second half got the real labels instead of NULL)"),
                    (all_null, "every sample got the null label: the first half needs the real labels"),
                    ((1 - w) * eps_cond + w * eps_uncond, "the signs are swapped: move away from eps(x_t, null), "
                     "towards eps(x_t, c)")]:
                if torch.allclose(got, wrong, atol=1e-5, rtol=1e-5):
                    hint = f"\nhint: {text}"
                    break
        compare(name, "eps_tilde", got, expected, case + hint, t=t, atol=1e-5, rtol=1e-5)
    passed(name, len(cases), "one batched call, w = 0 to 7.5, image and flat shapes, a batch of one")
