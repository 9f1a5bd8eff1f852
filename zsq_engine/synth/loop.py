"""Small pieces every synthesis loop shares: the progress bar, the input-statistics term,
the clean BN-loss measurement and the per-batch result record."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .. import ops
from ..evaluation import progress
from ..utils import BNInputRecorder

__all__ = ["BatchResult", "DeferredPlateau", "IterationBar", "input_stat_loss", "measure_bn_loss"]

# CUDA: losses are handed to ReduceLROnPlateau in groups of this many iterations (one host read).
CUDA_PLATEAU_EVERY = 10


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
            self._it.set_postfix(loss=f"{float(loss.detach()):.4g}", refresh=False)

    def close(self) -> None:
        if hasattr(self._it, "close"):
            self._it.close()


class DeferredPlateau:
    """``ReduceLROnPlateau(optimizer, ...)`` fed with on-device loss tensors without a host sync
    per iteration.

    The scheduler needs a Python float, i.e. a device-to-host read that stalls the GPU queue. On
    CUDA the losses are kept on the device and handed over ``every`` at a time (one read), in
    order, so the scheduler sees exactly the same sequence; only a learning-rate drop takes
    effect up to ``every - 1`` iterations late (against patiences of 50-100). On the CPU a read
    costs nothing, so ``every`` defaults to 1 there and the behaviour is exactly the eager one.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, every: Optional[int] = None,
                 **plateau_kwargs) -> None:
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **plateau_kwargs)
        if every is None:
            every = CUDA_PLATEAU_EVERY if torch.device(device).type == "cuda" else 1
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.every = every
        self._pending: list = []

    def step(self, loss: torch.Tensor) -> None:
        self._pending.append(loss.detach().reshape(()))
        if len(self._pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            values = torch.stack(self._pending).tolist()  # the one host read for the group
            self._pending.clear()
            for v in values:
                self.scheduler.step(v)


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


def optimise_pixels(teacher: nn.Module, x: torch.Tensor, loss_of: Callable[[int, BNInputRecorder], torch.Tensor],
                    settings: dict, device: torch.device, desc: str, show_progress: bool) -> torch.Tensor:
    """The pixel-optimisation loop of ZeroQ and HAST: Adam on the images ``x`` (a leaf that
    requires grad) with ``settings`` lr / min_lr / patience / iters and the deferred plateau
    schedule; ``loss_of(iteration, recorder)`` runs the teacher (the recorder is cleared before
    each call and holds the BN inputs afterwards) and returns the loss. Returns ``x`` detached."""
    opt = torch.optim.Adam([x], lr=settings["lr"])
    sched = DeferredPlateau(opt, device, min_lr=settings["min_lr"], patience=settings["patience"])
    bar = IterationBar(settings["iters"], desc, show_progress)
    with BNInputRecorder(teacher) as rec:
        for it in bar:
            opt.zero_grad(set_to_none=True)
            rec.clear()
            loss = loss_of(it, rec)
            loss.backward()
            opt.step()
            sched.step(loss.detach())
            bar.report(it, loss)
    bar.close()
    return x.detach()
