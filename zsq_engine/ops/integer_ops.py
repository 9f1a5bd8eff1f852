"""Public integer ops: exact int8 GEMM, int4 pack/unpack, integer conv2d (int32 accumulation).

Each is the torch.library op ``zsq::<name>`` (:func:`.schema.define_op`): reference by default,
the dispatched backend for CPU / CUDA tensors, a fake for torch.compile.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

from ..opspec import checks
from .dispatch import dispatch, register
from .reference import integer as _ref
from .schema import compiling, define_op

register("int_mm", "reference")(_ref.int_mm)
register("pack_int4", "reference")(_ref.pack_int4)
register("unpack_int4", "reference")(_ref.unpack_int4)
register("conv2d_int", "reference")(_ref.conv2d_int)

IntPair = Union[int, Tuple[int, int]]


def _conv_out(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _conv2d_int_fake(x, weight, stride, padding, dilation, groups, layout):
    h, w = (x.shape[2], x.shape[3]) if layout == "NCHW" else (x.shape[1], x.shape[2])
    oh = _conv_out(h, weight.shape[2], stride[0], padding[0], dilation[0])
    ow = _conv_out(w, weight.shape[3], stride[1], padding[1], dilation[1])
    shape = (x.shape[0], weight.shape[0], oh, ow) if layout == "NCHW" else (x.shape[0], oh, ow, weight.shape[0])
    return x.new_empty(shape, dtype=torch.int32)


_INT_MM = define_op("int_mm", "(Tensor a, Tensor b) -> Tensor", _ref.int_mm,
                    lambda a, b: a.new_empty((a.shape[0], b.shape[1]), dtype=torch.int32))
_PACK_INT4 = define_op("pack_int4", "(Tensor x) -> Tensor", _ref.pack_int4,
                       lambda x: x.new_empty((*x.shape[:-1], (x.shape[-1] + 1) // 2), dtype=torch.uint8))
_UNPACK_INT4 = define_op("unpack_int4", "(Tensor packed, int k, bool signed) -> Tensor", _ref.unpack_int4,
                         lambda packed, k, signed: packed.new_empty(
                             (*packed.shape[:-1], k), dtype=torch.int8 if signed else torch.uint8))
_CONV2D_INT = define_op("conv2d_int", "(Tensor x, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
                        "int groups, str layout) -> Tensor", _ref.conv2d_int, _conv2d_int_fake)


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
        return _INT_MM(a, b)
    return dispatch("int_mm", a.device)(a, b)


def pack_int4(x: torch.Tensor) -> torch.Tensor:
    """Pack int4 values two per byte along the last dimension.

    ``x``: int8 with values in [-8, 7] (signed int4) or uint8 in [0, 15] (unsigned). Returns
    uint8 with last dimension ``(K + 1) // 2``: element ``2i`` in the low nibble of byte ``i``,
    ``2i + 1`` in the high nibble, two's-complement nibbles, odd K padded with 0. The range check
    reads the values (a host sync on CUDA): packing is a conversion step, not a training hot path.
    """
    checks.check_tensor("x", x, (torch.int8, torch.uint8))
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    if x.numel():
        lo, hi = (-8, 7) if x.dtype == torch.int8 else (0, 15)
        xmin, xmax = torch.aminmax(x)
        if int(xmin) < lo or int(xmax) > hi:
            raise ValueError(f"x holds values in [{int(xmin)}, {int(xmax)}] but int4 packing of {x.dtype} "
                             f"needs [{lo}, {hi}]; quantize to 4 bits first")
    if compiling():
        return _PACK_INT4(x)
    return dispatch("pack_int4", x.device)(x)


def unpack_int4(packed: torch.Tensor, k: int, signed: bool = True) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: int8 (signed) or uint8 (unsigned) with last dimension ``k``."""
    checks.check_tensor("packed", packed, (torch.uint8,))
    if packed.dim() == 0:
        raise ValueError("packed must have at least one dimension")
    if isinstance(k, bool) or not isinstance(k, int) or (k + 1) // 2 != packed.shape[-1] or k < 1:
        raise ValueError(f"k={k!r} does not match packed.shape[-1]={packed.shape[-1]} "
                         f"(expected k in {{{2 * packed.shape[-1] - 1}, {2 * packed.shape[-1]}}})")
    if compiling():
        return _UNPACK_INT4(packed, k, bool(signed))
    return dispatch("unpack_int4", packed.device)(packed, k, bool(signed))


def _pair(name: str, v: IntPair, minimum: int) -> Tuple[int, int]:
    pair = (v, v) if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) and p >= minimum for p in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return pair  # type: ignore[return-value]


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
        return _CONV2D_INT(x, weight, stride, padding, dilation, groups, layout)
    return dispatch("conv2d_int", x.device)(x, weight, stride, padding, dilation, groups, layout)
