"""The AdaRound op family: ``adaround_fake_quant`` (soft / hard rounded weights),
``adaround_regularizer``, and the helpers ``adaround_init`` / ``adaround_h``.

This file: the public functions (argument checks, then the op). ``library.py``: the
torch.library ops and their autograd; ``reference.py``: the pure-PyTorch primitives (the
oracle); ``cpu.py`` / ``triton.py``: the primitives' kernels per backend
(docs/architecture.md).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ...opspec import checks
from ..dispatch import add_backend_modules
from . import library
from . import reference as _ref

add_backend_modules(f"{__name__}.cpu", f"{__name__}.triton")

__all__ = ["adaround_fake_quant", "adaround_h", "adaround_init", "adaround_regularizer"]


def _check_adaround(w_floor, alpha, scale, zero_point, quant_min, quant_max, axis):
    checks.check_float_tensor("w_floor", w_floor)
    checks.check_float_tensor("alpha", alpha)
    if alpha.shape != w_floor.shape:
        raise ValueError(f"alpha must have the shape of w_floor {tuple(w_floor.shape)}, got {tuple(alpha.shape)}")
    checks.check_same_device("w_floor", w_floor, "alpha", alpha)
    checks.check_quant_range(quant_min, quant_max)
    axis = checks.normalize_axis(axis, w_floor.dim())
    scale = checks.as_param_tensor("scale", scale, w_floor, torch.float32)
    zero_point = checks.as_param_tensor("zero_point", zero_point, w_floor, torch.float32)
    checks.check_qparams(w_floor, scale, zero_point, axis)
    return scale, zero_point, axis


def adaround_fake_quant(w_floor: torch.Tensor, alpha: torch.Tensor, scale, zero_point, quant_min: int,
                        quant_max: int, axis: Optional[int] = 0, hard: bool = False) -> torch.Tensor:
    """AdaRound weights: ``(clamp(w_floor + h(alpha) + zp, quant_min, quant_max) - zp) * scale``.

    ``w_floor = floor(W / s0)`` (frozen), ``alpha`` the rounding logits (same shape), ``scale`` /
    ``zero_point`` per channel along ``axis`` (or one element with axis=None). Soft: ``h`` is the
    rectified sigmoid (gamma=-0.1, zeta=1.1), gradients to alpha and scale; hard: ``h = alpha >= 0``.
    """
    scale, zero_point, axis = _check_adaround(w_floor, alpha, scale, zero_point, quant_min, quant_max, axis)
    return library.adaround_fake_quant(w_floor, alpha, scale, zero_point, quant_min, quant_max, axis, bool(hard))


def adaround_regularizer(alpha: torch.Tensor, beta) -> torch.Tensor:
    """``sum(1 - |2 h(alpha) - 1| ** beta)``: pushes every h to 0 or 1 as beta anneals 20 -> 2."""
    checks.check_float_tensor("alpha", alpha)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta <= 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    return library.adaround_regularizer(alpha, float(beta))


def adaround_init(weight: torch.Tensor, scale: torch.Tensor, axis: Optional[int] = 0
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(w_floor, alpha)`` with ``w_floor = floor(weight / scale)`` and ``h(alpha)`` = the fraction."""
    checks.check_float_tensor("weight", weight)
    axis = checks.normalize_axis(axis, weight.dim())
    scale = checks.as_param_tensor("scale", scale, weight, torch.float32)
    checks.check_qparams(weight, scale, torch.zeros_like(scale), axis)
    return _ref.adaround_init(weight.detach(), scale.detach(), axis)


def adaround_h(alpha: torch.Tensor) -> torch.Tensor:
    """The rectified sigmoid ``clamp(sigmoid(alpha) * 1.2 - 0.1, 0, 1)``."""
    checks.check_float_tensor("alpha", alpha)
    return _ref.rectified_sigmoid(alpha)
