"""The machinery shared by every checker: calling student code safely and comparing tensors."""
from __future__ import annotations

import torch

RED, GREEN, BOLD, RESET = "\033[31m", "\033[32m", "\033[1m", "\033[0m"


class ExerciseFailed(Exception):
    """A check did not pass. IPython shows only the message, not a traceback into the package."""

    def __init__(self, exercise: str, message: str):
        self.exercise = exercise
        self.message = message
        super().__init__(f"{exercise}: {message}")

    def _render_traceback_(self):
        lines = [f"{RED}{BOLD}✘ {self.exercise}: not yet right{RESET}"]
        lines += [f"  {line}" for line in self.message.splitlines()]
        return lines


def passed(exercise: str, n_cases: int, what: str = "") -> None:
    detail = f" ({what})" if what else ""
    print(f"{GREEN}✔ {exercise}: all {n_cases} cases pass{detail}.{RESET}")


def call_student(exercise: str, fn, case: str, *args, **kwargs):
    """Call the student's function; turn anything it raises into a readable ExerciseFailed."""
    if not callable(fn):
        raise ExerciseFailed(exercise, f"expected a function, got {type(fn).__name__}")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise ExerciseFailed(exercise, "not implemented yet: replace `raise NotImplementedError()` "
                                       "with your code.") from None
    except Exception as err:  # noqa: BLE001 - any error in student code is reported, not re-raised
        raise ExerciseFailed(exercise, f"your function raised {type(err).__name__}: {err}\n"
                                       f"while checking: {case}") from None


def compare(exercise: str, name: str, got, expected: torch.Tensor, case: str,
            t: torch.Tensor | None = None, atol: float | None = None, rtol: float | None = None) -> None:
    """Compare a student's tensor with the reference; say precisely what differs.

    The default tolerance follows the dtype: float32 answers may differ by float32 rounding
    (1 - alpha_bar_t near t = 0 keeps only a few digits), float64 answers must agree closely.
    """
    where = f"while checking: {case}"
    if not isinstance(got, torch.Tensor):
        raise ExerciseFailed(exercise, f"{name} should be a torch.Tensor, got {type(got).__name__}\n{where}")
    if got.shape != expected.shape:
        hint = ""
        if got.dim() != expected.dim():
            hint = ("\nhint: per-sample values of shape (B,) must be reshaped to (B, 1, ..., 1) "
                    "to broadcast against x")
        raise ExerciseFailed(exercise, f"{name} has shape {tuple(got.shape)}, expected "
                                       f"{tuple(expected.shape)}{hint}\n{where}")
    if got.dtype != expected.dtype:
        hint = ("\nhint: the schedule tensors are float64; cast the per-sample coefficients with "
                ".to(x.dtype) before multiplying" if got.dtype == torch.float64 else "")
        raise ExerciseFailed(exercise, f"{name} has dtype {got.dtype}, expected {expected.dtype} "
                                       f"(keep the dtype of the inputs){hint}\n{where}")
    if atol is None:
        atol = 1e-9 if expected.dtype == torch.float64 else 5e-5
    if rtol is None:
        rtol = 1e-7 if expected.dtype == torch.float64 else 1e-4
    got_d, exp_d = got.detach().double(), expected.detach().double()
    if not torch.isfinite(got_d).all():
        raise ExerciseFailed(exercise, f"{name} contains NaN or inf\n{where}")
    bad = ~torch.isclose(got_d, exp_d, atol=atol, rtol=rtol)
    if bad.any():
        err = (got_d - exp_d).abs()
        idx = tuple(int(i) for i in bad.nonzero()[0])
        got_v, exp_v = got_d[idx].item(), exp_d[idx].item()
        lines = [f"{name} differs from the reference in {int(bad.sum())} of {bad.numel()} entries; "
                 f"largest difference {err.max().item():.3g}",
                 f"first wrong entry {list(idx)}: got {got_v:.10g}, expected {exp_v:.10g} "
                 f"(difference {abs(got_v - exp_v):.3g}; allowed {atol + rtol * abs(exp_v):.3g} = "
                 f"{atol:.0e} + {rtol:.0e} x |expected|)"]
        if t is not None and got.dim() >= 1 and len(t) == got.shape[0]:
            lines.append(_timestep_summary(bad, t))
        raise ExerciseFailed(exercise, "\n".join(lines) + f"\n{where}")


def _timestep_summary(bad: torch.Tensor, t: torch.Tensor) -> str:
    """Which timesteps are wrong: a timestep with both wrong and right samples is named as such, not twice."""
    wrong_rows = bad.reshape(bad.shape[0], -1).any(dim=1)
    wrong_t = {int(v) for v in t[wrong_rows]}
    right_t = {int(v) for v in t[~wrong_rows]}
    mixed = sorted(wrong_t & right_t)
    text = f"wrong at timesteps t = {_short(sorted(wrong_t - right_t))}" if wrong_t - right_t else ""
    if mixed:
        text += ("; " if text else "") + (f"at t = {_short(mixed)} some samples are right and others wrong "
                                          f"(so the error depends on more than t)")
    if right_t - wrong_t:
        text += f"; right at t = {_short(sorted(right_t - wrong_t))}"
    return text


def _short(values, most: int = 8) -> str:
    text = ", ".join(str(v) for v in values[:most])
    return text + (", ..." if len(values) > most else "")
