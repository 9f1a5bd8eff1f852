"""The fused epilogue of the integer GEMM / conv kernels: what it computes (its float64 reference is
:mod:`zsq_engine.ops.int_gemm.reference`).

An integer GEMM ``a [M, K] x w [N, K]^T`` (or an implicit-GEMM conv, ``M`` = output pixels,
``N`` = output channels, ``K`` = kh * kw * C) accumulates int32. :class:`Epilogue` says what
happens to that accumulator before it is stored, in this order:

1. zero-point correction (exact, int32): ``acc = sum_k (a - za)(w - zw)``
   ``= sum a w - za * colsum(w)[n] - zw[n] * rowsum(a)[m] + K * za * zw[n]``;
   ``colsum(w)`` is ``weight_col_sum`` when given (precompute it once per weight), else computed
   by the launcher; ``rowsum(a)`` is accumulated inside the kernel.
2. dequantisation (fp32): ``v = acc * (act_scale[m] * weight_scale[n])``; ``act_scale`` is
   per tensor (one element) or per row (``M`` elements), ``weight_scale`` per tensor or per
   output channel (``N`` elements).
3. ``v += bias[n]``; ``v += residual[m, n]`` (a float tensor, or int8/uint8 dequantised as
   ``(r - residual_zero_point) * residual_scale``); residual adds stay in this float epilogue.
4. ``activation``: ``"none"``, ``"relu"`` or ``"relu6"`` (clamp to [0, 6]).
5. output: fp32 / fp16 / bf16 (round to nearest even), or requantised int8 / uint8
   ``clamp(round_half_even(v / out_scale) + out_zero_point, quant_min, quant_max)``.

``out_dtype=torch.int32`` keeps the integer accumulator: only the zero-point correction is
allowed then. Scales may be python floats or fp32 tensors (tensors avoid any host sync).

Bad scale values (checked by :meth:`Epilogue.validate` and the op layer, the same on every
backend): ``act_scale``, ``residual_scale`` and ``out_scale`` must be finite and > 0 and
``weight_scale`` finite (a folded BatchNorm makes it zero or negative legitimately). Python
numbers are always checked (ValueError); one-element ``out_scale`` / ``residual_scale`` tensors
are checked where reading them is free (CPU tensors, :func:`zsq_engine.opspec.checks.value_checks_enabled`);
per-channel / per-row ``weight_scale`` and ``act_scale`` tensors are not read: a NaN in them gives
NaN in the affected outputs, as a NaN input would.

Error budget (fp32 epilogue vs the float64 reference): ``acc -> fp32``, the scale product,
the product, the bias and residual adds each round once (2^-24 relative to the magnitudes
involved), so ``|out - ref| <= 8 * 2^-24 * (|acc * s| + |bias| + |residual|)`` before the cast
to the output dtype, which adds half an ulp of fp16 / bf16. Requantised outputs therefore equal
the reference except where ``v / out_scale`` lies within that budget of a rounding tie
(``x.5``), where they may differ by one; with power-of-two scales every step is exact and the
result is bit-identical, ties included (round half to even).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

from .dtypes import ACTIVATIONS, FLOAT_OUT_DTYPES, OUT_DTYPES, QUANT_OUT_DTYPES

ScalarOrTensor = Union[float, int, torch.Tensor]


@dataclass
class Epilogue:
    """What the integer GEMM / conv does with its int32 accumulator (see the module doc).

    Shapes (``M`` rows = GEMM rows or conv output pixels, ``N`` = output channels):
    ``weight_scale`` [N] or [1]; ``act_scale`` [M] or [1]; ``weight_zero_point`` int or int
    tensor [N] / [1]; ``weight_col_sum`` int32 [N] (``w.sum(K)`` of the *unpacked* weight);
    ``bias`` float [N]; ``residual`` float or int8/uint8 [M, N] (GEMM) or NHWC
    [batch, OH, OW, N] (conv).
    """

    weight_scale: Optional[ScalarOrTensor] = None
    act_scale: Optional[ScalarOrTensor] = None
    act_zero_point: int = 0
    weight_zero_point: Optional[Union[int, torch.Tensor]] = None
    weight_col_sum: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    residual: Optional[torch.Tensor] = None
    residual_scale: Optional[ScalarOrTensor] = None
    residual_zero_point: int = 0
    activation: str = "none"
    out_dtype: torch.dtype = torch.float32
    out_scale: Optional[ScalarOrTensor] = None
    out_zero_point: int = 0
    quant_min: Optional[int] = None
    quant_max: Optional[int] = None

    # ------------------------------------------------------------------ validation
    def validate(self) -> "Epilogue":
        """Raise a clear error for an inconsistent combination; returns self."""
        if self.out_dtype not in OUT_DTYPES:
            names = ", ".join(str(d).replace("torch.", "") for d in OUT_DTYPES)
            raise TypeError(f"epilogue.out_dtype must be one of ({names}), got {self.out_dtype}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"epilogue.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        for name in ("act_zero_point", "residual_zero_point", "out_zero_point"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not -(2 ** 31) <= v < 2 ** 31:
                raise TypeError(f"epilogue.{name} must be a python int (int32 range), got {v!r}")
        zw = self.weight_zero_point
        if zw is not None and not isinstance(zw, torch.Tensor) and (isinstance(zw, bool) or not isinstance(zw, int)):
            raise TypeError(f"epilogue.weight_zero_point must be an int or an integer tensor, got {type(zw).__name__}")
        if isinstance(zw, torch.Tensor) and (zw.dtype.is_floating_point or zw.dtype.is_complex or zw.dtype == torch.bool):
            raise TypeError(f"epilogue.weight_zero_point must be an integer tensor, got {zw.dtype}")
        if self.out_dtype == torch.int32:
            extra = [n for n in ("weight_scale", "act_scale", "bias", "residual", "out_scale")
                     if getattr(self, n) is not None]
            if extra or self.activation != "none":
                raise ValueError("epilogue.out_dtype=int32 keeps the integer accumulator: only the zero-point "
                                 f"correction is allowed, but {extra or ['activation=' + self.activation]} was set")
            return self
        if self.weight_scale is None or self.act_scale is None:
            raise ValueError(f"epilogue.out_dtype={self.out_dtype} needs weight_scale and act_scale to dequantize "
                             "the int32 accumulator")
        for name, positive in (("weight_scale", False), ("act_scale", True), ("residual_scale", True),
                               ("out_scale", True)):
            v = getattr(self, name)
            if v is not None and not isinstance(v, torch.Tensor):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise TypeError(f"epilogue.{name} must be a float or a float32 tensor, got {type(v).__name__}")
                if not math.isfinite(v) or (positive and not v > 0):
                    raise ValueError(f"epilogue.{name} must be finite{' and > 0' if positive else ''}, got {v}")
        if self.residual is not None and self.residual.dtype in QUANT_OUT_DTYPES and self.residual_scale is None:
            raise ValueError("an int8/uint8 epilogue.residual needs residual_scale (and residual_zero_point)")
        if self.residual is not None and self.residual.dtype not in FLOAT_OUT_DTYPES + QUANT_OUT_DTYPES:
            raise TypeError(f"epilogue.residual must be float32/float16/bfloat16/int8/uint8, got {self.residual.dtype}")
        if self.bias is not None and (not isinstance(self.bias, torch.Tensor) or not self.bias.dtype.is_floating_point):
            raise TypeError("epilogue.bias must be a floating-point tensor of shape [N]")
        if self.out_dtype in QUANT_OUT_DTYPES:
            if self.out_scale is None:
                raise ValueError(f"epilogue.out_dtype={self.out_dtype} (requantize) needs out_scale")
            qmin, qmax = self.quant_range()
            if qmin >= qmax:
                raise ValueError(f"epilogue quant_min must be < quant_max, got {qmin} and {qmax}")
        return self

    @property
    def integer_output(self) -> bool:
        return self.out_dtype == torch.int32

    def quant_range(self):
        lo, hi = (-128, 127) if self.out_dtype == torch.int8 else (0, 255)
        qmin = lo if self.quant_min is None else self.quant_min
        qmax = hi if self.quant_max is None else self.quant_max
        if not (lo <= qmin <= hi and lo <= qmax <= hi):
            raise ValueError(f"epilogue quant range [{qmin}, {qmax}] does not fit {self.out_dtype} [{lo}, {hi}]")
        return qmin, qmax

    def has_weight_zero_point(self) -> bool:
        zw = self.weight_zero_point
        return zw is not None and (isinstance(zw, torch.Tensor) or zw != 0)


# ---------------------------------------------------------------------- schema arguments

# How an Epilogue (or None) crosses a torch.library schema: one typed argument per field. A
# scale that may be a python number or a tensor takes two arguments (``Tensor? name`` and
# ``float? name_value``) so that each keeps its own kind: a python scale needs no device
# tensor and a tensor scale is never read on the host.
EPILOGUE_SCHEMA = (
    "bool has_epilogue, Tensor? weight_scale, float? weight_scale_value, Tensor? act_scale, "
    "float? act_scale_value, int act_zero_point, Tensor? weight_zero_point, int? weight_zero_point_value, "
    "Tensor? weight_col_sum, Tensor? bias, Tensor? residual, Tensor? residual_scale, "
    "float? residual_scale_value, int residual_zero_point, str activation, ScalarType out_dtype, "
    "Tensor? out_scale, float? out_scale_value, int out_zero_point, int? quant_min, int? quant_max")
EPILOGUE_ARG_COUNT = EPILOGUE_SCHEMA.count(",") + 1
_SPLIT_FIELDS = ("weight_scale", "act_scale", "weight_zero_point", "residual_scale", "out_scale")


def _split(v):
    """(tensor or None, python number or None) of a field that may be either."""
    if v is None:
        return None, None
    if isinstance(v, torch.Tensor):
        return v, None
    return None, v


def epilogue_to_schema_args(epilogue: Optional[Epilogue]) -> tuple:
    """The :data:`EPILOGUE_SCHEMA` arguments of ``epilogue`` (``None``: plain int32)."""
    ep = epilogue
    if ep is None:
        return (False, None, None, None, None, 0, None, None, None, None, None, None, None, 0, "none",
                torch.int32, None, None, 0, None, None)
    ws, wsv = _split(ep.weight_scale)
    as_, asv = _split(ep.act_scale)
    wz, wzv = _split(ep.weight_zero_point)
    rs, rsv = _split(ep.residual_scale)
    os_, osv = _split(ep.out_scale)
    return (True, ws, None if wsv is None else float(wsv), as_, None if asv is None else float(asv),
            ep.act_zero_point, wz, wzv, ep.weight_col_sum, ep.bias, ep.residual, rs,
            None if rsv is None else float(rsv), ep.residual_zero_point, ep.activation, ep.out_dtype, os_,
            None if osv is None else float(osv), ep.out_zero_point, ep.quant_min, ep.quant_max)


def schema_out_dtype(args) -> torch.dtype:
    """The output dtype the :data:`EPILOGUE_SCHEMA` arguments ask for (int32 without an epilogue)."""
    return args[15] if args[0] else torch.int32


def epilogue_from_schema_args(args) -> Optional[Epilogue]:
    """Inverse of :func:`epilogue_to_schema_args`."""
    (has, ws, wsv, as_, asv, azp, wz, wzv, colsum, bias, residual, rs, rsv, rzp, activation, out_dtype, os_, osv,
     ozp, qmin, qmax) = args
    if not has:
        return None
    return Epilogue(weight_scale=wsv if ws is None else ws, act_scale=asv if as_ is None else as_,
                    act_zero_point=azp, weight_zero_point=wzv if wz is None else wz, weight_col_sum=colsum,
                    bias=bias, residual=residual, residual_scale=rsv if rs is None else rs,
                    residual_zero_point=rzp, activation=activation, out_dtype=out_dtype,
                    out_scale=osv if os_ is None else os_, out_zero_point=ozp, quant_min=qmin, quant_max=qmax)
