"""Public quantized-inference ops: integer GEMM and NHWC conv with the fused epilogue.

These are what the integer runtime calls; each backend implements two primitives:

* ``qgemm(a, w, epilogue, w_packed, a_packed, a_signed, k)``: ``a`` [M, K] times the weight
  ``w`` [N, K] (nn.Linear layout) transposed. ``a`` is int8 / uint8, or packed int4
  (``a_packed``: uint8 [M, ceil(k/2)], signed or unsigned nibbles per ``a_signed``); ``w`` is
  int8, or packed signed int4 (``w_packed``: uint8 [N, ceil(k/2)]). ``k`` is the true
  reduction length. W8A8 / W4A8 / W4A4.
* ``qconv2d_nhwc(x, w, stride, padding, dilation, groups, epilogue, pad_value)``: ``x`` int8 /
  uint8 [B, H, W, C], ``w`` int8 [O, kh, kw, C / groups]; out-of-image taps read ``pad_value``
  (the activation zero point for asymmetric uint8 activations, so padding is exact).

Both return int32 (``epilogue=None``: the exact product) or the epilogue's output dtype, see
:mod:`zsq_engine.opspec.epilogue` for what the epilogue computes and its error budget. The
references (:mod:`zsq_engine.ops.reference.quantized`) compute the exact product and the
epilogue in fp64; kernels must match them exactly for int32 outputs and within the epilogue's
budget otherwise. Both are torch.library ops (``zsq::qgemm``, ``zsq::qconv2d_nhwc``, see
:mod:`.schema`) whose schema carries the epilogue as typed arguments.

int4 conv weights are stored packed by the runtime and widened to int8 once when a model is
loaded: a conv is compute-bound at the sizes where int4 would matter, and neither Hopper nor
AVX-512 has a 4-bit multiply, so the kernels take int8 conv weights.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from ..opspec import checks
from ..opspec.epilogue import (EPILOGUE_ARG_COUNT, EPILOGUE_SCHEMA, epilogue_from_schema_args,
                                epilogue_to_schema_args, schema_out_dtype)
from .dispatch import dispatch, register
from .epilogue import Epilogue
from .reference import quantized as _ref_quantized
from .schema import compiling, define_op

IntPair = Union[int, Tuple[int, int]]

register("qgemm", "reference")(_ref_quantized.qgemm)
register("qconv2d_nhwc", "reference")(_ref_quantized.qconv2d_nhwc)


# ---------------------------------------------------------------------------- schemas
# The epilogue crosses the schema as EPILOGUE_SCHEMA's typed arguments (opspec.epilogue).

def _qgemm_primitive_args(a, w, *rest):
    ep_args, (w_packed, a_packed, a_signed, k) = rest[:EPILOGUE_ARG_COUNT], rest[EPILOGUE_ARG_COUNT:]
    return a, w, epilogue_from_schema_args(ep_args), w_packed, a_packed, a_signed, k


def _qgemm_fake(a, w, *rest):
    return a.new_empty((a.shape[0], w.shape[0]), dtype=schema_out_dtype(rest[:EPILOGUE_ARG_COUNT]))


def _qconv2d_nhwc_primitive_args(x, w, stride, padding, dilation, groups, *rest):
    ep_args, pad_value = rest[:EPILOGUE_ARG_COUNT], rest[EPILOGUE_ARG_COUNT]
    return (x, w, tuple(stride), tuple(padding), tuple(dilation), groups, epilogue_from_schema_args(ep_args),
            pad_value)


def _qconv2d_nhwc_fake(x, w, stride, padding, dilation, groups, *rest):
    out_dtype = schema_out_dtype(rest[:EPILOGUE_ARG_COUNT])
    oh = (x.shape[1] + 2 * padding[0] - dilation[0] * (w.shape[1] - 1) - 1) // stride[0] + 1
    ow = (x.shape[2] + 2 * padding[1] - dilation[1] * (w.shape[2] - 1) - 1) // stride[1] + 1
    return x.new_empty((x.shape[0], oh, ow, w.shape[0]), dtype=out_dtype)


_QGEMM = define_op("qgemm", f"(Tensor a, Tensor w, {EPILOGUE_SCHEMA}, bool w_packed, bool a_packed, bool a_signed, "
                   "int k) -> Tensor", _ref_quantized.qgemm, _qgemm_fake, _qgemm_primitive_args)
_QCONV2D_NHWC = define_op("qconv2d_nhwc", f"(Tensor x, Tensor w, int[2] stride, int[2] padding, int[2] dilation, "
                          f"int groups, {EPILOGUE_SCHEMA}, int pad_value) -> Tensor",
                          _ref_quantized.qconv2d_nhwc, _qconv2d_nhwc_fake, _qconv2d_nhwc_primitive_args)


# ---------------------------------------------------------------------------- validation

def _check_epilogue(epilogue: Optional[Epilogue], m: int, n: int, device: torch.device) -> None:
    if epilogue is None:
        return
    if not isinstance(epilogue, Epilogue):
        raise TypeError(f"epilogue must be a zsq_engine.ops.Epilogue or None, got {type(epilogue).__name__}")
    epilogue.validate()
    for name in ("weight_scale", "act_scale", "bias", "weight_zero_point", "weight_col_sum", "residual",
                 "residual_scale", "out_scale"):
        v = getattr(epilogue, name)
        if isinstance(v, torch.Tensor) and v.device != device:
            raise ValueError(f"epilogue.{name} is on {v.device} but the inputs are on {device}")
    for name, allowed in (("weight_scale", (1, n)), ("act_scale", (1, m)), ("bias", (n,)),
                          ("weight_col_sum", (n,))):
        v = getattr(epilogue, name)
        if isinstance(v, torch.Tensor) and v.numel() not in allowed:
            raise ValueError(f"epilogue.{name} has {v.numel()} elements, expected one of {sorted(set(allowed))}")
    zw = epilogue.weight_zero_point
    if isinstance(zw, torch.Tensor) and zw.numel() not in (1, n):
        raise ValueError(f"epilogue.weight_zero_point has {zw.numel()} elements, expected 1 or {n}")
    for name in ("out_scale", "residual_scale"):
        v = getattr(epilogue, name)
        if isinstance(v, torch.Tensor) and v.numel() and checks.value_checks_enabled(v):
            if v.numel() != 1:
                raise ValueError(f"epilogue.{name} must have one element, got {v.numel()}")
            value = float(v.detach().reshape(-1)[0])
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"epilogue.{name} must be finite and > 0, got {value}")
    if epilogue.residual is not None and epilogue.residual.numel() != m * n:
        raise ValueError(f"epilogue.residual has shape {tuple(epilogue.residual.shape)}, expected {m * n} "
                         f"elements ([M, N] = [{m}, {n}] or the NHWC output shape)")


def _check_k(k: Optional[int], packed_cols: int, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int (the unpacked reduction length) when {name} is packed, got {k!r}")
    if (k + 1) // 2 != packed_cols:
        raise ValueError(f"{name} has {packed_cols} packed columns, which holds k in "
                         f"{{{2 * packed_cols - 1}, {2 * packed_cols}}}, not k={k}")
    return k


def _pair(name: str, v: IntPair, minimum: int) -> Tuple[int, int]:
    pair = (v, v) if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) and p >= minimum for p in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return pair  # type: ignore[return-value]


# ---------------------------------------------------------------------------- public ops

def qgemm(a: torch.Tensor, w: torch.Tensor, epilogue: Optional[Epilogue] = None, *, w_packed: bool = False,
          a_packed: bool = False, a_signed: bool = True, k: Optional[int] = None) -> torch.Tensor:
    """Integer GEMM ``a @ w.T`` with a fused epilogue (W8A8, W4A8 with ``w_packed``, W4A4 with both).

    ``a``: int8 / uint8 [M, K], or with ``a_packed`` uint8 [M, ceil(k/2)] (``a_signed`` picks
    int4 or uint4 nibbles); ``w``: int8 [N, K], or with ``w_packed`` uint8 [N, ceil(k/2)] from
    :func:`zsq_engine.ops.pack_int4`. ``k`` is needed when anything is packed. Returns int32
    [M, N] (exact) without an epilogue, else the epilogue's ``out_dtype``."""
    checks.check_tensor("a", a, (torch.uint8,) if a_packed else (torch.int8, torch.uint8))
    checks.check_tensor("w", w, (torch.uint8,) if w_packed else (torch.int8,))
    if a.dim() != 2 or w.dim() != 2:
        raise ValueError(f"a and w must be 2-D ([M, K] and [N, K]), got a {tuple(a.shape)} and w {tuple(w.shape)}")
    checks.check_same_device("a", a, "w", w)
    if a_packed or w_packed:
        k = _check_k(k, (a if a_packed else w).shape[1], "a" if a_packed else "w")
        for name, t, packed in (("a", a, a_packed), ("w", w, w_packed)):
            want = (k + 1) // 2 if packed else k
            if t.shape[1] != want:
                raise ValueError(f"{name} has {t.shape[1]} columns, expected {want} for k={k} "
                                 f"({'packed' if packed else 'unpacked'})")
    else:
        if a.shape[1] != w.shape[1]:
            raise ValueError(f"a is [M, K] = {tuple(a.shape)} and w must be [N, K] with the same K, got w {tuple(w.shape)}")
        if k is not None and k != a.shape[1]:
            raise ValueError(f"k={k} does not match K={a.shape[1]}")
        k = a.shape[1]
    if a_packed and a.dtype != torch.uint8:
        raise TypeError("a must be uint8 when a_packed=True")
    _check_epilogue(epilogue, a.shape[0], w.shape[0], a.device)
    args = (a, w, epilogue, bool(w_packed), bool(a_packed), bool(a_signed), int(k))
    if 0 in (a.shape[0], w.shape[0], k):
        # nothing to multiply: the fp64 reference gives the exact result (the epilogue applied to a
        # zero product for K = 0, as a matmul with K = 0 gives zeros) on every backend
        return _ref_quantized.qgemm(*args)
    if compiling():
        return _QGEMM(a, w, *epilogue_to_schema_args(epilogue), *args[3:])
    return dispatch("qgemm", a.device)(*args)


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
    _check_epilogue(epilogue, b * oh * ow, o, x.device)
    if compiling():
        return _QCONV2D_NHWC(x, w, stride, padding, dilation, groups, *epilogue_to_schema_args(epilogue), pad_value)
    return dispatch("qconv2d_nhwc", x.device)(x, w, stride, padding, dilation, groups, epilogue, pad_value)
