"""Sample-quality figures that need no trained network: energy distance, masks and IoU, FLOPs."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import datasets


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| between two point clouds (0 iff same distribution)."""
    x, y = x.double(), y.double()
    return (2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()).item()




def shape_masks(images: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """(B, 1, H, W) {0, 1}: where a shapes image differs from the background colour (the generated shape)."""
    background = torch.tensor(datasets.BACKGROUND_RGB, dtype=images.dtype)[None, :, None, None] * 2 - 1
    return ((images - background).abs().amax(1, keepdim=True) > threshold).float()


def mask_iou(mask_a: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
    """Per-image intersection over union of two {0, 1} masks (1 where both are empty)."""
    a, b = mask_a.flatten(1) > 0.5, mask_b.flatten(1) > 0.5
    union = (a | b).sum(1)
    return torch.where(union > 0, (a & b).sum(1) / union.clamp(min=1), torch.ones(len(a)))


def flops_per_call(fn) -> int:
    """Floating-point operations of one call of fn() (torch's FLOP counter: matmuls and convolutions)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
