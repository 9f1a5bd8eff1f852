"""How closely an integer model reproduces the fake-quant model it came from, on labelled data.

The issue's bar: top-1 agreement >= 99.9 % and accuracy within 0.1 point on the Fashion-MNIST
test set. Both models see the same batches; nothing is synchronised per batch (counts stay on
the device until the end).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..evaluation import progress

__all__ = ["agreement"]


@torch.no_grad()
def agreement(fq_model: nn.Module, int_model: nn.Module, batches: Iterable, device="cpu",
              show_progress: bool = True, desc: str = "int vs fake-quant") -> dict:
    """Compare ``int_model`` with ``fq_model`` on ``(x, y)`` batches.

    Returns ``{"images", "agreement", "fq_accuracy", "int_accuracy", "accuracy_delta",
    "max_logit_diff", "mean_abs_logit_diff"}`` (percentages for the first four rates;
    ``accuracy_delta`` = int - fake-quant in points). Raises ValueError on no data.
    """
    device = torch.device(device)
    was_training = fq_model.training
    fq_model.eval()
    same = torch.zeros((), dtype=torch.int64, device=device)
    fq_ok = torch.zeros_like(same)
    int_ok = torch.zeros_like(same)
    max_diff = torch.zeros((), dtype=torch.float32, device=device)
    sum_diff = torch.zeros((), dtype=torch.float64, device=device)
    seen = elements = 0
    total = len(batches) if hasattr(batches, "__len__") else None
    try:
        for x, y in progress(batches, total=total, desc=desc, enabled=show_progress):
            x, y = x.to(device), y.to(device)
            ref, out = fq_model(x).float(), int_model(x).float()
            p_ref, p_out = ref.argmax(1), out.argmax(1)
            same += (p_ref == p_out).sum()
            fq_ok += (p_ref == y).sum()
            int_ok += (p_out == y).sum()
            diff = (out - ref).abs()
            max_diff = torch.maximum(max_diff, diff.max())
            sum_diff += diff.double().sum()
            seen += y.numel()
            elements += diff.numel()
    finally:
        fq_model.train(was_training)
    if seen == 0:
        raise ValueError("agreement got no data")
    fq_acc, int_acc = 100.0 * int(fq_ok) / seen, 100.0 * int(int_ok) / seen
    return {"images": seen, "agreement": 100.0 * int(same) / seen, "fq_accuracy": fq_acc, "int_accuracy": int_acc,
            "accuracy_delta": int_acc - fq_acc, "max_logit_diff": float(max_diff),
            "mean_abs_logit_diff": float(sum_diff) / elements}
