"""The integer GEMM family: ``qgemm`` (int8 / packed int4 GEMM with the fused epilogue of
:class:`zsq_engine.opspec.epilogue.Epilogue`) and ``int_mm`` (the exact int8 matmul). This file:
the public functions (checks, then the op); ``library.py``: the torch.library ops;
``reference.py``: the float64 oracle (the epilogue's reference too); ``cpu.py`` / ``triton.py``:
the kernels per backend, ``cpu.py`` also the prepared call ``prepare_linear``
(docs/architecture.md).

``qgemm``: ``a`` [M, K] times the weight ``w`` [N, K] (nn.Linear layout) transposed; ``a`` int8 /
uint8, or packed int4 (``a_packed``: uint8 [M, ceil(k/2)], signed or unsigned nibbles per
``a_signed``); ``w`` int8, or packed signed int4 (``w_packed``). Returns int32 (``epilogue=None``:
the exact product) or the epilogue's output dtype; kernels match the reference exactly for int32
outputs and within the epilogue's error budget otherwise.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ...opspec import checks
from ...opspec.epilogue import Epilogue, epilogue_to_schema_args
from ..dispatch import add_backend_modules, dispatch
from ..schema import compiling
from . import library, reference

add_backend_modules(f"{__name__}.cpu", f"{__name__}.triton")

__all__ = ["check_epilogue", "int_mm", "qgemm"]


def check_epilogue(epilogue: Optional[Epilogue], m: int, n: int, device: torch.device) -> None:
    """The epilogue of an [m, n] output on ``device``: its own checks, then each tensor's device and size."""
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
    check_epilogue(epilogue, a.shape[0], w.shape[0], a.device)
    args = (a, w, epilogue, bool(w_packed), bool(a_packed), bool(a_signed), int(k))
    if 0 in (a.shape[0], w.shape[0], k):
        # nothing to multiply: the fp64 reference gives the exact result (the epilogue applied to a
        # zero product for K = 0, as a matmul with K = 0 gives zeros) on every backend
        return reference.qgemm(*args)
    if compiling():
        return library.QGEMM(a, w, *epilogue_to_schema_args(epilogue), *args[3:])
    return dispatch("qgemm", a.device)(*args)


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ``a @ b`` for int8 ``a`` [M, K] and int8 ``b`` [K, N]; int32 [M, N] (zeros when
    K = 0, as a matmul gives; empty when M or N is 0), the same on every backend."""
    checks.check_tensor("a", a, (torch.int8,))
    checks.check_tensor("b", b, (torch.int8,))
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"a and b must be 2-D, got a.dim()={a.dim()} and b.dim()={b.dim()}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    checks.check_same_device("a", a, "b", b)
    if 0 in (a.shape[0], a.shape[1], b.shape[1]):
        return torch.zeros(a.shape[0], b.shape[1], dtype=torch.int32, device=a.device)  # no kernel for no work
    if compiling():
        return library.INT_MM(a, b)
    return dispatch("int_mm", a.device)(a, b)
