"""Accuracy evaluation and small report helpers shared by the CLI commands."""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import torch
from torch import nn


def progress(iterable, total: Optional[int] = None, desc: str = "", enabled: bool = True):
    """tqdm when available and enabled (stderr), else the iterable itself."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but evaluation must not need it
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, batches: Iterable, device: torch.device | str = "cpu",
                      desc: str = "eval", show_progress: bool = True) -> float:
    """Top-1 accuracy in percent of ``model`` (eval mode) over ``(x, y)`` batches.

    The train/eval mode of the model is restored afterwards. Raises ValueError on no data.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    total = len(batches) if hasattr(batches, "__len__") else None
    try:
        for x, y in progress(batches, total=total, desc=desc, enabled=show_progress):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            correct += (model(x).argmax(dim=1) == y).sum()  # no per-batch host sync
            seen += y.numel()
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate_accuracy got no data")
    return 100.0 * int(correct) / seen


@torch.no_grad()
def evaluate_topk(model: nn.Module, batches: Iterable, device: torch.device | str = "cpu",
                  ks: Sequence[int] = (1, 5), desc: str = "eval", show_progress: bool = True) -> dict:
    """Top-k accuracies in percent, ``{k: acc}``, of ``model`` over ``(x, y)`` batches.

    A k at or above the number of classes counts every image as correct (so a toy model with
    fewer than 5 classes still gets a top-5 figure instead of an error).
    Raises ValueError on no data, or labels outside the model's outputs (naming both).
    """
    was_training = model.training
    model.eval()
    correct = {k: torch.zeros((), dtype=torch.int64, device=device) for k in ks}
    seen = 0
    total = len(batches) if hasattr(batches, "__len__") else None
    try:
        for x, y in progress(batches, total=total, desc=desc, enabled=show_progress):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            if int(y.max()) >= logits.shape[1]:
                raise ValueError(f"label {int(y.max())} is outside the model's {logits.shape[1]} outputs")
            top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
            hit = top == y.unsqueeze(1)
            for k in ks:
                correct[k] += hit[:, :k].any(dim=1).sum()
            seen += y.numel()
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate_topk got no data")
    return {k: 100.0 * int(c) / seen for k, c in correct.items()}


def format_table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    """A markdown table (readable as plain text too)."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])
