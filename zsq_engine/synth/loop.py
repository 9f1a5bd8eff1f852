"""Small pieces every synthesis loop shares: the progress bar, the input-statistics term,
the clean BN-loss measurement and the per-batch result record."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .. import ops
from ..evaluation import progress
from .hooks import BNInputRecorder

__all__ = ["BatchResult", "IterationBar", "input_stat_loss", "measure_bn_loss"]


@dataclass
class BatchResult:
    """One synthesized batch: ``images`` float32 [B, C, H, W] (normalised input space, CPU),
    ``labels`` int64 [B] or None, and the BN loss of the initial and of the final images."""
    images: torch.Tensor
    labels: Optional[torch.Tensor]
    bn_loss_start: float
    bn_loss_end: float


class IterationBar:
    """``for it in IterationBar(n, desc, enabled): ... bar.report(loss)``; the loss is shown every
    ``every`` iterations only, so the bar costs no host sync on the other iterations."""

    def __init__(self, iters: int, desc: str, enabled: bool, every: int = 10) -> None:
        self._it = progress(range(iters), total=iters, desc=desc, enabled=enabled)
        self._every = every

    def __iter__(self):
        return iter(self._it)

    def report(self, it: int, loss: torch.Tensor) -> None:
        if it % self._every == 0 and hasattr(self._it, "set_postfix"):
            self._it.set_postfix(loss=f"{float(loss):.4g}", refresh=False)

    def close(self) -> None:
        if hasattr(self._it, "close"):
            self._it.close()


def input_stat_loss(x: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel input mean 0 / std 1 (ZeroQ / Genie): the input is treated as the
    input of a virtual BN layer with running mean 0 and variance 1 ('zeroq' variant)."""
    c = x.shape[1]
    zeros = torch.zeros(c, device=x.device, dtype=torch.float32)
    ones = torch.ones(c, device=x.device, dtype=torch.float32)
    return ops.bn_stat_loss([x], [zeros], [ones], "zeroq")


@torch.no_grad()
def measure_bn_loss(teacher: nn.Module, images: torch.Tensor, variant: str) -> float:
    """BN loss of ``images`` under a clean teacher forward (no augmentation, no swing conv)."""
    with BNInputRecorder(teacher) as rec:
        teacher(images)
        return float(ops.bn_stat_loss(*rec.loss_inputs(), variant=variant))
