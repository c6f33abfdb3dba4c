"""The workbook's one training loop, and the EMA of a model's weights.

Every trainer (the recipes in ``course.train``, the seq2seq of notebook 01, ControlNet, LoRA) draws its own
batches inside ``batch_loss(step)`` and hands the loop the rest: the optimiser, an optional learning-rate
schedule, gradient clipping and the progress bar.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch
from tqdm.auto import tqdm

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
LR_SCHEDULES = ("cosine", "onecycle")


def _lr_schedule(name: str | None, optimizer, lr: float, steps: int, pct_start: float):
    if name is None:
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=pct_start)
    raise ValueError(f"lr_schedule must be None or one of {LR_SCHEDULES}, got {name!r}")


def fit(parameters, batch_loss: Callable, steps: int, lr: float, *, optimizer: str = "adamw",
        weight_decay: float = 0.0, lr_schedule: str | None = None, pct_start: float = 0.05,
        clip_grad_norm: float | None = None, after_step: Callable | None = None, desc: str = "training",
        progress: bool = True, mininterval: float = 1.0, to_stdout: bool = True) -> list[float]:
    """Minimise ``batch_loss(step)`` for ``steps`` steps; returns the loss of every step.

    ``batch_loss(step)`` returns the loss, or (loss, {name: value shown on the bar}). ``after_step(step)``
    runs after each optimiser (and schedule) step, e.g. for an EMA update or a learning curve.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    parameters = list(parameters)
    if not parameters:
        raise ValueError("no parameters to train: does any parameter require grad?")
    opt = OPTIMIZERS[optimizer](parameters, lr=lr, weight_decay=weight_decay)
    schedule = _lr_schedule(lr_schedule, opt, lr, steps, pct_start)
    history = []
    bar = tqdm(range(steps), desc=desc, mininterval=mininterval, disable=not progress,
               file=sys.stdout if to_stdout else None)
    for step in bar:
        result = batch_loss(step)
        loss, shown = result if isinstance(result, tuple) else (result, None)
        opt.zero_grad()
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
        opt.step()
        if schedule is not None:
            schedule.step()
        if after_step is not None:
            after_step(step)
        history.append(loss.item())
        bar.set_postfix(shown if shown is not None else {"loss": f"{history[-1]:.4f}"}, refresh=False)
    return history


@torch.no_grad()
def ema_update(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for p_ema, p in zip(ema_model.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - decay)


def ema_decay(step: int, target: float) -> float:
    """The warm-up of the EMA decay used by the recipes: min(target, (1 + step) / (10 + step))."""
    return min(target, (1 + step) / (10 + step))
