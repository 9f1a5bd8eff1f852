"""The FP-vs-naive-PTQ accuracy table used by ``zsq eval`` and ``zsq demo``."""
from __future__ import annotations

import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from zsq_engine.evaluation import evaluate_accuracy


def accuracy_rows(model: nn.Module, configs: Sequence[Tuple[int, int]], calib_batches: List,
                  test_batches: Iterable, device: torch.device, show_progress: bool = True,
                  first_last_bits: int = 8, on_row: Optional[Callable[[Dict], None]] = None) -> List[Dict]:
    """FP accuracy, then naive PTQ accuracy for each (wbits, abits); one dict per row, each also
    handed to ``on_row`` as soon as it is measured."""
    from zsq_engine.quant import naive_ptq

    model = model.to(device).eval()
    t0 = time.perf_counter()
    fp = evaluate_accuracy(model, test_batches, device, desc="FP32", show_progress=show_progress)
    rows = [{"method": "FP32", "wbits": 32, "abits": 32, "accuracy": fp, "delta": 0.0,
             "seconds": time.perf_counter() - t0}]
    if on_row is not None:
        on_row(rows[-1])
    calib = [(x.to(device), y) for x, y in calib_batches]
    for wbits, abits in configs:
        t0 = time.perf_counter()
        qmodel = naive_ptq(model, calib, wbits, abits, first_last_bits=first_last_bits, progress=False)
        acc = evaluate_accuracy(qmodel, test_batches, device, desc=f"W{wbits}A{abits}",
                                show_progress=show_progress)
        rows.append({"method": "naive PTQ", "wbits": wbits, "abits": abits, "accuracy": acc,
                     "delta": acc - fp, "seconds": time.perf_counter() - t0})
        if on_row is not None:
            on_row(rows[-1])
    return rows


def rows_as_table(rows: List[Dict]) -> str:
    from zsq_engine.evaluation import format_table

    body = [(r["method"], "FP32" if r["wbits"] == 32 else f"W{r['wbits']}A{r['abits']}",
             f"{r['accuracy']:.2f}", "" if r["wbits"] == 32 else f"{r['delta']:+.2f}", f"{r['seconds']:.1f}")
            for r in rows]
    return format_table(("method", "bits", "top-1 %", "vs FP", "time s"), body)
