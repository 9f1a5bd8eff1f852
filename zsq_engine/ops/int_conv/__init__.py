"""The integer conv family: ``qconv2d_nhwc`` (int8 NHWC conv with the fused epilogue of
:class:`zsq_engine.opspec.epilogue.Epilogue`, an implicit GEMM) and ``conv2d_int`` (the exact
integer conv2d). This file: the public functions (checks, then the op); ``library.py``: the
torch.library ops; ``reference.py``: the float64 oracle; ``cpu.py`` / ``cuda.py`` / ``triton.py``:
the kernels per backend, ``cpu.py`` also the prepared call ``prepare_conv`` (docs/architecture.md).

int4 conv weights are stored packed by the runtime and widened to int8 once when a model is
loaded: a conv is compute-bound at the sizes where int4 would matter, and neither Hopper nor
AVX-512 has a 4-bit multiply, so the kernels take int8 conv weights.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from ...opspec import checks
from ...opspec.epilogue import Epilogue, epilogue_to_schema_args
from ..dispatch import add_backend_modules, dispatch
from ..int_gemm import check_epilogue
from ..schema import compiling
from . import library

add_backend_modules(f"{__name__}.cpu", f"{__name__}.cuda", f"{__name__}.triton")

__all__ = ["conv2d_int", "qconv2d_nhwc"]

IntPair = Union[int, Tuple[int, int]]


def _pair(name: str, v: IntPair, minimum: int) -> Tuple[int, int]:
    pair = (v, v) if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) and p >= minimum for p in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return pair  # type: ignore[return-value]


def qconv2d_nhwc(x: torch.Tensor, w: torch.Tensor, stride: IntPair = 1, padding: IntPair = 0,
                 dilation: IntPair = 1, groups: int = 1, epilogue: Optional[Epilogue] = None,
                 pad_value: int = 0) -> torch.Tensor:
    """Integer conv2d in NHWC with a fused epilogue.

    ``x``: int8 / uint8 [B, H, W, C]; ``w``: int8 [O, kh, kw, C / groups]; ``pad_value`` is the
    value of out-of-image taps (0, or the activation zero point). Returns [B, OH, OW, O]: int32
    (exact) without an epilogue, else the epilogue's ``out_dtype`` (``M`` = B * OH * OW rows,
    ``residual`` given as [B, OH, OW, O])."""
    checks.check_tensor("x", x, (torch.int8, torch.uint8))
    checks.check_tensor("w", w, (torch.int8,))
    if x.dim() != 4 or w.dim() != 4:
        raise ValueError(f"x must be NHWC [B, H, W, C] and w [O, kh, kw, C / groups], got x {tuple(x.shape)} "
                         f"and w {tuple(w.shape)}")
    checks.check_same_device("x", x, "w", w)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    b, h, wd, c = x.shape
    o, kh, kw, cg = w.shape
    if cg * groups != c or o % groups:
        raise ValueError(f"w {tuple(w.shape)} with groups={groups} does not fit x with C={c} "
                         "(expected w.shape[3] * groups == C and O divisible by groups)")
    lo, hi = (-128, 127) if x.dtype == torch.int8 else (0, 255)
    if isinstance(pad_value, bool) or not isinstance(pad_value, int) or not lo <= pad_value <= hi:
        raise ValueError(f"pad_value must be an int in [{lo}, {hi}] for {x.dtype} x, got {pad_value!r}")
    stride, padding, dilation = _pair("stride", stride, 1), _pair("padding", padding, 0), _pair("dilation", dilation, 1)
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"the output would be empty ({oh}x{ow}) for input {h}x{wd}, kernel {kh}x{kw}, "
                         f"stride {stride}, padding {padding}, dilation {dilation}")
    check_epilogue(epilogue, b * oh * ow, o, x.device)
    if compiling():
        return library.QCONV2D_NHWC(x, w, stride, padding, dilation, groups, *epilogue_to_schema_args(epilogue), pad_value)
    return dispatch("qconv2d_nhwc", x.device)(x, w, stride, padding, dilation, groups, epilogue, pad_value)


def conv2d_int(x: torch.Tensor, weight: torch.Tensor, stride: IntPair = 1, padding: IntPair = 0,
               dilation: IntPair = 1, groups: int = 1, layout: str = "NCHW") -> torch.Tensor:
    """Integer conv2d with exact int32 accumulation (zero padding, no bias / zero points).

    ``x``: int8 or uint8, [N, C, H, W] (layout="NCHW") or [N, H, W, C] (layout="NHWC");
    ``weight``: int8 [O, C / groups, kh, kw]. Returns int32 in ``x``'s layout.
    """
    checks.check_tensor("x", x, (torch.int8, torch.uint8))
    checks.check_tensor("weight", weight, (torch.int8,))
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"x and weight must be 4-D, got x.dim()={x.dim()} and weight.dim()={weight.dim()}")
    checks.check_same_device("x", x, "weight", weight)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    channels = x.shape[1] if layout == "NCHW" else x.shape[3]
    if channels % groups or weight.shape[0] % groups or weight.shape[1] * groups != channels:
        raise ValueError(f"weight {tuple(weight.shape)} with groups={groups} does not fit {channels} input "
                         f"channels (expected weight.shape[1] * groups == channels, both divisible by groups)")
    stride, padding, dilation = _pair("stride", stride, 1), _pair("padding", padding, 0), _pair("dilation", dilation, 1)
    if compiling():
        return library.CONV2D_INT(x, weight, stride, padding, dilation, groups, layout)
    return dispatch("conv2d_int", x.device)(x, weight, stride, padding, dilation, groups, layout)
