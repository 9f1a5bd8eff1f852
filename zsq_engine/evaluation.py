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


def format_table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    """A markdown table (readable as plain text too)."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])
