"""The scale-search op family: ``scale_search`` (per-channel Lp clipping search, BRECQ's 'mse'
initialisation) and ``minmax_qparams`` (its closed-form min-max start, reference only).

This file: the public functions (argument checks, then the op). ``library.py``: the
torch.library op; ``reference.py``: the pure-PyTorch primitive (the oracle); ``cpu.py`` /
``triton.py``: its kernels per backend (docs/architecture.md).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ...opspec import checks
from ..dispatch import add_backend_modules, dispatch
from ..schema import compiling
from . import library
from . import reference as _ref

add_backend_modules(f"{__name__}.cpu", f"{__name__}.triton")

__all__ = ["minmax_qparams", "scale_search"]


def scale_search(x: torch.Tensor, quant_min: int, quant_max: int, axis: Optional[int] = 0,
                 num_candidates: int = 80, p: float = 2.4, symmetric: bool = False
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel Lp clipping search (BRECQ 'mse' init; Genie-M uses 100 candidates).

    Returns fp32 ``(scale, zero_point)`` shaped ``[x.shape[axis]]`` (``[1]`` for axis=None)
    minimising ``mean |x - fake_quant(x)|^p`` over clipping ratios 1.0, 0.99, ... of the
    channel's min/max. See :mod:`zsq_engine.ops.scale_search.reference` for the formulas.
    A NaN or infinite ``x`` is a ValueError (CPU tensors; on CUDA only with ZSQ_CHECK_VALUES=1,
    otherwise the scale of such a channel is unspecified): no scale fits such a channel.
    """
    checks.check_float_tensor("x", x)
    checks.check_quant_range(quant_min, quant_max)
    axis = checks.normalize_axis(axis, x.dim())
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or not 1 <= num_candidates <= 100:
        raise ValueError(f"num_candidates must be an int in [1, 100], got {num_candidates!r}")
    if not isinstance(p, (int, float)) or p <= 0:
        raise ValueError(f"p must be a positive number, got {p!r}")
    if x.numel() == 0:
        raise ValueError("x must not be empty")
    checks.check_finite_values("x", x, " (no clipping range fits a channel holding NaN or inf)")
    args = (x.detach().contiguous(), quant_min, quant_max, axis, num_candidates, float(p), bool(symmetric))
    if compiling():
        return library.SCALE_SEARCH(*args)
    return dispatch("scale_search", x.device)(*args)


def minmax_qparams(min_val: torch.Tensor, max_val: torch.Tensor, quant_min: int, quant_max: int,
                   symmetric: bool = False, eps: float = 1e-8) -> Tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(scale, zero_point)`` from observed ranges (widened to contain 0), vectorised.

    ``min_val <= max_val`` everywhere and both finite, else ValueError (CPU tensors; on CUDA only
    with ZSQ_CHECK_VALUES=1, otherwise NaN propagates and an inverted range gives the range [0, 0]
    widened by ``eps``). ``eps`` (> 0) is the smallest scale."""
    checks.check_tensor("min_val", min_val, checks.PARAM_DTYPES)
    checks.check_tensor("max_val", max_val, checks.PARAM_DTYPES)
    if min_val.shape != max_val.shape:
        raise ValueError(f"min_val and max_val must have one shape, got {tuple(min_val.shape)} and "
                         f"{tuple(max_val.shape)}")
    checks.check_same_device("min_val", min_val, "max_val", max_val)
    checks.check_quant_range(quant_min, quant_max)
    checks.check_scalar("eps", eps, positive=True)
    checks.check_finite_values("min_val", min_val)
    checks.check_finite_values("max_val", max_val)
    if min_val.numel() and checks.value_checks_enabled(min_val):
        inverted = (min_val > max_val).nonzero()
        if inverted.numel():
            i = tuple(int(v) for v in inverted[0])
            raise ValueError(f"min_val must be <= max_val everywhere, but at index {i if len(i) != 1 else i[0]} "
                             f"min_val={float(min_val[i])} > max_val={float(max_val[i])}")
    return _ref.minmax_qparams(min_val, max_val, quant_min, quant_max, symmetric, eps)
