"""HAST hard-sample synthesis: pixels optimised from a Gaussian start towards random labels with
BN-statistics matching plus a hardness term (defaults and behaviour: docs/synth.md).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..utils import random_resized_crop_flip
from .loop import BatchResult, measure_bn_loss, optimise_pixels

__all__ = ["DEFAULTS", "hardness_weights", "synthesize_batch"]

DEFAULTS = {"iters": 1000, "lr": 0.5, "min_lr": 1e-4, "patience": 50, "beta": None, "gamma": None,
            "crop_scale": [0.4, 1.0], "crop_ratio": [3 / 4, 4 / 3], "augment": None, "bn_weight": 1.0}


def _is_small(input_shape: Sequence[int]) -> bool:
    return max(input_shape[-2:]) <= 64


def hardness_weights(input_shape: Sequence[int]) -> Tuple[float, float]:
    """(beta, gamma): (10, 2) for small images (side <= 64: CIFAR, Fashion-MNIST), else (0.1, 0.5)."""
    return (10.0, 2.0) if _is_small(input_shape) else (0.1, 0.5)


def hardness_loss(ce: torch.Tensor, gamma: float) -> torch.Tensor:
    """HAST's difficulty-weighted cross-entropy mean((1 - p_y)^gamma * CE) from per-sample CE.

    1 - p_y is computed as -expm1(-CE) (exact for confident samples, where 1 - exp(-CE) cancels)
    and kept above the smallest normal float: at p_y == 1 the derivative of (1 - p_y)^gamma is
    infinite for gamma < 1 (ImageNet's 0.5), and inf * 0 would turn the whole batch into NaN."""
    hardness = (-torch.expm1(-ce)).clamp_min(torch.finfo(ce.dtype).tiny)
    return (hardness.pow(gamma) * ce).mean()


def synthesize_batch(teacher: nn.Module, batch_size: int, input_shape: Sequence[int], num_classes: int,
                     settings: dict, device: torch.device, show_progress: bool = False,
                     desc: str = "hast") -> BatchResult:
    """One labelled batch from the global RNG (the caller seeds it); teacher already frozen."""
    s = {**DEFAULTS, **settings}
    beta, gamma = hardness_weights(input_shape)
    beta = beta if s["beta"] is None else s["beta"]
    gamma = gamma if s["gamma"] is None else s["gamma"]
    augment = not _is_small(input_shape) if s["augment"] is None else bool(s["augment"])
    x = torch.randn(batch_size, *input_shape, device=device).requires_grad_(True)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    aug_rng = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,)).item()))
    start = measure_bn_loss(teacher, x.detach(), "hast")

    def loss_of(it: int, rec) -> torch.Tensor:
        inp = random_resized_crop_flip(x, s["crop_scale"], s["crop_ratio"], aug_rng) \
            if augment and it % 2 == 1 else x
        logits = teacher(inp)
        bn = ops.bn_stat_loss(*rec.loss_inputs(), variant="hast")
        ce = F.cross_entropy(logits, labels, reduction="none")
        return s["bn_weight"] * bn + beta * hardness_loss(ce, gamma)

    images = optimise_pixels(teacher, x, loss_of, s, device, desc, show_progress)
    return BatchResult(images.float().cpu(), labels.cpu(), start, measure_bn_loss(teacher, images, "hast"))
