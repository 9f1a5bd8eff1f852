"""Reference min-max quantization parameters and the per-channel Lp clipping search.

Asymmetric: the range is widened to contain 0, ``scale = (max - min) / (quant_max - quant_min)``
and ``zero_point = quant_min - round(min / scale)``. Symmetric (PyTorch's convention):
``scale = max(|min|, |max|) / ((quant_max - quant_min) / 2)`` and ``zero_point`` is 0 for a
signed range, ``(quant_min + quant_max + 1) // 2`` for an unsigned one. Scales are clamped below
by ``eps`` so an all-zero channel never divides by zero.

The search (BRECQ's 'mse' initialisation, Genie-M's step init) tries clipping ratios
1.0, 0.99, ..., 1 - 0.01 (N - 1) of each channel's range and keeps, per channel, the candidate
whose fake-quantized tensor minimises mean |x - x_q|^p (the first one on ties). Here it loops
over the candidates, each vectorised over all channels; the fused kernels do it in one launch.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def minmax_qparams(min_val: torch.Tensor, max_val: torch.Tensor, quant_min: int, quant_max: int,
                   symmetric: bool = False, eps: float = 1e-8) -> Tuple[torch.Tensor, torch.Tensor]:
    min_val = torch.clamp(min_val.float(), max=0.0)
    max_val = torch.clamp(max_val.float(), min=0.0)
    if symmetric:
        absmax = torch.maximum(-min_val, max_val)
        scale = torch.clamp(absmax / ((quant_max - quant_min) / 2.0), min=eps)
        zp_value = 0 if quant_min < 0 else (quant_min + quant_max + 1) // 2
        zero_point = torch.full_like(scale, float(zp_value))
    else:
        scale = torch.clamp((max_val - min_val) / float(quant_max - quant_min), min=eps)
        zero_point = torch.clamp(quant_min - torch.round(min_val / scale), quant_min, quant_max)
    return scale, zero_point


def _fake_quant_rows(x2d: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, quant_min: int,
                     quant_max: int) -> torch.Tensor:
    inv = torch.reciprocal(scale)[:, None]
    q = torch.clamp(torch.round(x2d * inv) + zp[:, None], quant_min, quant_max)
    return (q - zp[:, None]) * scale[:, None]


def scale_search(x: torch.Tensor, quant_min: int, quant_max: int, axis: Optional[int] = 0,
                 num_candidates: int = 80, p: float = 2.4, symmetric: bool = False,
                 eps: float = 1e-8) -> Tuple[torch.Tensor, torch.Tensor]:
    if axis is None:
        x2d = x.detach().float().reshape(1, -1)
    else:
        x2d = x.detach().float().movedim(axis, 0).reshape(x.shape[axis], -1)
    xmin, xmax = x2d.amin(dim=1), x2d.amax(dim=1)
    best_err = torch.full_like(xmin, float("inf"))
    best_scale = torch.ones_like(xmin)
    best_zp = torch.zeros_like(xmin)
    for i in range(num_candidates):
        ratio = 1.0 - 0.01 * i
        scale, zp = minmax_qparams(xmin * ratio, xmax * ratio, quant_min, quant_max, symmetric, eps)
        err = (x2d - _fake_quant_rows(x2d, scale, zp, quant_min, quant_max)).abs().pow(p).mean(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zp = torch.where(better, zp, best_zp)
    return best_scale, best_zp
