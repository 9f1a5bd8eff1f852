"""The FP-vs-naive-PTQ accuracy table used by ``zsq eval`` and ``zsq demo``."""
from __future__ import annotations

import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from zsq_engine.evaluation import evaluate_topk


WEIGHT_ROUNDINGS = ("nearest", "squant")


def accuracy_rows(model: nn.Module, configs: Sequence[Tuple[int, int]], calib_batches: List,
                  test_batches: Iterable, device: torch.device, show_progress: bool = True,
                  first_last_bits: int = 8, on_row: Optional[Callable[[Dict], None]] = None,
                  weight_rounding: str = "nearest") -> List[Dict]:
    """FP accuracy, then naive PTQ accuracy for each (wbits, abits); one dict per row
    (``accuracy`` is top-1, ``top5`` top-5, in percent), each also handed to ``on_row`` as soon
    as it is measured. ``weight_rounding='squant'`` rounds the weights by SQuant (data-free)
    before the activation ranges are calibrated."""
    from zsq_engine.quant import calibrate_activations, quantize_model
    from zsq_engine.quant.squant import apply_squant

    if weight_rounding not in WEIGHT_ROUNDINGS:
        raise ValueError(f"weight_rounding must be one of {WEIGHT_ROUNDINGS}, got {weight_rounding!r}")
    method = "naive PTQ" if weight_rounding == "nearest" else "naive PTQ + SQuant"

    model = model.to(device).eval()
    t0 = time.perf_counter()
    fp_acc = evaluate_topk(model, test_batches, device, desc="FP32", show_progress=show_progress)
    fp = fp_acc[1]
    rows = [{"method": "FP32", "wbits": 32, "abits": 32, "accuracy": fp, "top5": fp_acc[5], "delta": 0.0,
             "seconds": time.perf_counter() - t0}]
    if on_row is not None:
        on_row(rows[-1])
    calib = [(x.to(device), y) for x, y in calib_batches]
    for wbits, abits in configs:
        t0 = time.perf_counter()
        qmodel = quantize_model(model, wbits, abits, first_last_bits=first_last_bits)
        if weight_rounding == "squant":
            apply_squant(qmodel)
        calibrate_activations(qmodel, calib, progress=False)
        acc = evaluate_topk(qmodel, test_batches, device, desc=f"W{wbits}A{abits}", show_progress=show_progress)
        rows.append({"method": method, "wbits": wbits, "abits": abits, "accuracy": acc[1], "top5": acc[5],
                     "delta": acc[1] - fp, "seconds": time.perf_counter() - t0})
        if on_row is not None:
            on_row(rows[-1])
    return rows


def rows_as_table(rows: List[Dict], top5: bool = False) -> str:
    from zsq_engine.evaluation import format_table

    body = [(r["method"], "FP32" if r["wbits"] == 32 else f"W{r['wbits']}A{r['abits']}",
             f"{r['accuracy']:.2f}", "" if r["wbits"] == 32 else f"{r['delta']:+.2f}")
            + ((f"{r['top5']:.2f}",) if top5 else ()) + (f"{r['seconds']:.1f}",) for r in rows]
    header = ("method", "bits", "top-1 %", "vs FP") + (("top-5 %",) if top5 else ()) + ("time s",)
    return format_table(header, body)
