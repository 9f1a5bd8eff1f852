"""ZeroQ data synthesis: optimise the pixels of a Gaussian batch so that the per-image statistics
of every BN input match the running statistics ('zeroq' variant), plus per-image input mean 0 /
std 1. Adam lr 0.5, ReduceLROnPlateau(min_lr 1e-4, patience 100), 500 iterations (paper)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import ops
from .loop import BatchResult, input_stat_loss, measure_bn_loss, optimise_pixels

__all__ = ["DEFAULTS", "synthesize_batch"]

DEFAULTS = {"iters": 500, "lr": 0.5, "min_lr": 1e-4, "patience": 100}


def synthesize_batch(teacher: nn.Module, batch_size: int, input_shape: Sequence[int], num_classes: int,
                     settings: dict, device: torch.device, show_progress: bool = False,
                     desc: str = "zeroq") -> BatchResult:
    """One batch [batch_size, *input_shape] from the global RNG (the caller seeds it).

    ``teacher`` must already be frozen (see :func:`zsq_engine.utils.frozen_teacher`).
    """
    s = {**DEFAULTS, **settings}
    x = torch.randn(batch_size, *input_shape, device=device).requires_grad_(True)
    start = measure_bn_loss(teacher, x.detach(), "zeroq")

    def loss_of(it: int, rec) -> torch.Tensor:
        teacher(x)
        return ops.bn_stat_loss(*rec.loss_inputs(), variant="zeroq") + input_stat_loss(x)

    images = optimise_pixels(teacher, x, loss_of, s, device, desc, show_progress)
    return BatchResult(images.float().cpu(), None, start, measure_bn_loss(teacher, images, "zeroq"))
