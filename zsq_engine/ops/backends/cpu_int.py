"""CPU integer GEMM / conv of the C++ extension as the 'cpu' ``qgemm``, ``qconv2d_nhwc`` and
``int_mm`` (imported by :mod:`zsq_engine.ops.backends.cpu`).

Weight packing. The C++ kernels read the weight as VNNI panels (``_C.int_pack_weight_cpu``:
int8 [groups, ceil(N_g/16), ceil(K/4), 16, 4] plus int32 column sums). A runtime calls the op
again and again with the same weight tensor, so packed panels are cached per weight *tensor
object*: an entry is reused only while that object is alive, its data pointer, shape, strides
and version counter (bumped by every in-place write) are unchanged; it is dropped when the
tensor is freed. A new view of the same storage (``w.reshape(...)`` each call) misses, so
hold the weight tensor itself, or pack explicitly with :func:`pack_weight` and call
:func:`qgemm_packed`. Inference tensors have no version counter and are packed on every call.

ISA. ``ZSQ_CPU_INT_ISA=auto|scalar|avx2|avx512_vnni`` forces the micro-kernel (tests use it
to cover every path on one machine); forcing one the CPU lacks is an error. The depthwise
kernel has no ISA switch (plain loops compiled for AVX-512 / AVX2 / baseline, picked by the
loader).
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch

from zsq_engine._ext import get_extension

from ...opspec.dtypes import ACTIVATION_CODES, QUANT_OUT_DTYPES
from ...opspec.epilogue import Epilogue
from ..dispatch import register

_C = get_extension()

ISA_ENV = "ZSQ_CPU_INT_ISA"
ISA_CODES = {"auto": 0, "scalar": 1, "avx2": 2, "avx512_vnni": 3}
# Output-kind codes of the C++ epilogue (csrc/bind/int_gemm.cpp); activations use ACTIVATION_CODES.
_OUT_KIND = {torch.int32: 0, torch.float32: 1, torch.float16: 2, torch.bfloat16: 3, torch.int8: 4, torch.uint8: 5}


def isa_code() -> int:
    name = os.environ.get(ISA_ENV, "").strip().lower() or "auto"
    if name not in ISA_CODES:
        raise ValueError(f"{ISA_ENV}={name!r} is not one of {', '.join(ISA_CODES)}")
    return ISA_CODES[name]


class PackedWeight(NamedTuple):
    """Weight panels for the CPU kernels: ``n`` output channels in ``groups`` groups, length ``k``."""
    panels: torch.Tensor
    colsum: torch.Tensor
    n: int
    k: int
    groups: int


def pack_weight(w: torch.Tensor, *, groups: int = 1, w_packed: bool = False, k: Optional[int] = None) -> PackedWeight:
    """Pack ``w`` int8 [N, K] (or packed int4 uint8 [N, ceil(k/2)] with ``w_packed``; or a conv
    weight [O, kh, kw, C/groups], viewed as [O, kh*kw*C/groups]) for :func:`qgemm_packed` and
    the CPU conv."""
    w2 = w.reshape(w.shape[0], -1)
    if k is None:
        k = w2.shape[1]
    panels, colsum = _C.int_pack_weight_cpu(w2, groups, bool(w_packed), int(k))
    return PackedWeight(panels, colsum, w2.shape[0], int(k), groups)


# id(weight) -> (weakref to it, its version, {key: packed form})
_cache: dict = {}


def cached_for_tensor(w: torch.Tensor, key: tuple, make: Callable[[], object]):
    """``make()`` (a packed form of ``w``), reused while ``w`` is alive and unchanged: same
    object, version counter, data pointer, shape, strides, dtype and device (see the module
    doc). ``key`` names the packed form, so one weight can hold several (the cuda backend uses
    this too)."""
    try:
        version = w._version
    except RuntimeError:  # inference tensors track no version: nothing proves them unchanged
        return make()
    key = key + (tuple(w.shape), tuple(w.stride()), w.dtype, w.device, w.data_ptr())
    ident = id(w)
    entry = _cache.get(ident)
    if entry is None or entry[0]() is not w or entry[1] != version:
        entry = (weakref.ref(w, lambda _r, i=ident: _cache.pop(i, None)), version, {})
        _cache[ident] = entry
    packs = entry[2]
    if key not in packs:
        packs[key] = make()
    return packs[key]


def cached_pack(w: torch.Tensor, *, groups: int = 1, w_packed: bool = False, k: Optional[int] = None,
                transposed: bool = False) -> PackedWeight:
    """:func:`pack_weight` of ``w`` (of ``w.t()`` when ``transposed``), reused while ``w`` is
    unchanged (see the module doc)."""
    src = w.t() if transposed else w
    return cached_for_tensor(w, ("cpu_panels", groups, bool(w_packed), k, transposed),
                             lambda: pack_weight(src, groups=groups, w_packed=w_packed, k=k))


def _f32_vector(v, device=None) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.detach().to(torch.float32).reshape(-1).contiguous()
    return torch.tensor([float(v)], dtype=torch.float32, device=device)


def _f32_scalar(name: str, v) -> float:
    t = _f32_vector(v)
    if t.numel() != 1:
        raise ValueError(f"epilogue.{name} must be a scalar or a one-element tensor, got {t.numel()} elements")
    return float(t[0])


@dataclass(frozen=True)
class BoundEpilogue:
    """An :class:`Epilogue` converted once into what the C++ kernels take: named fields instead
    of the 14 positional arguments (whose order lives only in :meth:`args`), codes for the output
    kind and the activation, fp32 / int32 tensors already contiguous. ``residual`` is not bound:
    it changes per call (its grid, ``residual_scale`` / ``residual_zero_point``, does not)."""

    out_kind: int = 0  # _OUT_KIND: 0 int32 accumulator, 1 fp32, 2 fp16, 3 bf16, 4 int8, 5 uint8
    act_zero_point: int = 0
    weight_zero_point: Optional[torch.Tensor] = None
    weight_scale: Optional[torch.Tensor] = None
    act_scale: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    residual_scale: float = 1.0
    residual_zero_point: int = 0
    activation: int = 0  # ACTIVATION_CODES
    out_scale: float = 1.0
    out_zero_point: int = 0
    quant_min: int = 0
    quant_max: int = 0

    @classmethod
    def bind(cls, ep: Optional[Epilogue], device: Optional[torch.device] = None,
             residual_dtype: Optional[torch.dtype] = None) -> "BoundEpilogue":
        """Convert ``ep`` (None: int32 accumulator output); scales given as python numbers become
        tensors on ``device`` (the CPU by default). ``residual_dtype``: the dtype of the residual
        the calls will pass (``ep.residual``'s when None); an integer residual binds
        ``ep.residual_scale``."""
        if ep is None:
            return cls()
        ep.validate()
        wzp = None
        if ep.has_weight_zero_point():
            zw = ep.weight_zero_point
            wzp = (zw.detach().to(torch.int32).reshape(-1).contiguous() if isinstance(zw, torch.Tensor)
                   else torch.tensor([zw], dtype=torch.int32, device=device))
        if ep.integer_output:
            return cls(act_zero_point=ep.act_zero_point, weight_zero_point=wzp)
        bias = None if ep.bias is None else ep.bias.detach().to(torch.float32).reshape(-1).contiguous()
        if residual_dtype is None and ep.residual is not None:
            residual_dtype = ep.residual.dtype
        res_scale = 1.0
        if residual_dtype in QUANT_OUT_DTYPES:
            res_scale = _f32_scalar("residual_scale", ep.residual_scale)
        out_scale, qmin, qmax = 1.0, 0, 0
        if ep.out_dtype in QUANT_OUT_DTYPES:
            out_scale = _f32_scalar("out_scale", ep.out_scale)
            qmin, qmax = ep.quant_range()
        return cls(_OUT_KIND[ep.out_dtype], ep.act_zero_point, wzp, _f32_vector(ep.weight_scale, device),
                   _f32_vector(ep.act_scale, device), bias, res_scale, ep.residual_zero_point,
                   ACTIVATION_CODES[ep.activation], out_scale, ep.out_zero_point, qmin, qmax)

    def args(self, residual: Optional[torch.Tensor] = None) -> tuple:
        """The 14 positional epilogue arguments of the ``_C.int_*`` functions (csrc/bind/int_gemm.cpp)."""
        return (self.out_kind, self.act_zero_point, self.weight_zero_point, self.weight_scale, self.act_scale,
                self.bias, residual, self.residual_scale, self.residual_zero_point, self.activation,
                self.out_scale, self.out_zero_point, self.quant_min, self.quant_max)


def epilogue_args(ep: Optional[Epilogue], device: Optional[torch.device] = None) -> tuple:
    """The 14 epilogue arguments of the ``_C.int_*`` functions for one call (``ep.residual``
    included); see :class:`BoundEpilogue`."""
    return BoundEpilogue.bind(ep, device).args(None if ep is None else ep.residual)


def _act_kind(a: torch.Tensor, a_packed: bool, a_signed: bool) -> int:
    if a_packed:
        return 2 if a_signed else 3
    return 0 if a.dtype == torch.int8 else 1


def qgemm_packed(a: torch.Tensor, packed: PackedWeight, epilogue: Optional[Epilogue] = None, *,
                 a_packed: bool = False, a_signed: bool = True) -> torch.Tensor:
    """``qgemm`` with a weight packed once by :func:`pack_weight` (no cache lookup): ``a``
    int8/uint8 [M, K], or packed int4 [M, ceil(K/2)] with ``a_packed``."""
    if packed.groups != 1:
        raise ValueError(f"packed holds {packed.groups} groups; qgemm needs a weight packed with groups=1")
    return _C.int_gemm_cpu(a, _act_kind(a, a_packed, a_signed), packed.k, packed.panels, packed.colsum, packed.n,
                           *epilogue_args(epilogue), isa=isa_code())


def _qgemm(a, w, epilogue, w_packed, a_packed, a_signed, k):
    packed = cached_pack(w, w_packed=w_packed, k=k)
    return qgemm_packed(a, packed, epilogue, a_packed=a_packed, a_signed=a_signed)


def _int_mm(a, b):
    # b [K, N] is the transposed [N, K] weight; packed panels are cached on b itself
    packed = cached_pack(b, transposed=True)
    return qgemm_packed(a, packed)


def _qconv2d_nhwc(x, w, stride, padding, dilation, groups, epilogue, pad_value):
    o, kh, kw, cg = w.shape
    geometry = (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    if groups == x.shape[3] == o and cg == 1:
        return _C.int_depthwise_conv2d_nhwc_cpu(x, w, *geometry, pad_value, *epilogue_args(epilogue))
    packed = cached_pack(w, groups=groups)
    return _C.int_conv2d_nhwc_cpu(x, packed.panels, packed.colsum, o, kh, kw, *geometry, groups, pad_value,
                                  *epilogue_args(epilogue), isa=isa_code())


_RESIDUAL_KIND = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3, torch.int8: 4, torch.uint8: 5}


class CodesGrid(NamedTuple):
    """A second output of an fp32-output call: the same values as codes of this activation grid,
    with the fake-quant op's arithmetic ``clamp(round_half_even(v * fp32(1/scale)) + zero_point,
    qmin, qmax)`` (int8 when ``qmin < 0``, else uint8)."""
    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @property
    def dtype(self) -> torch.dtype:
        return torch.int8 if self.qmin < 0 else torch.uint8


def _native_args(ep: BoundEpilogue, residual_dtype: Optional[torch.dtype], codes: Optional[CodesGrid]) -> tuple:
    if residual_dtype is not None and residual_dtype not in _RESIDUAL_KIND:
        raise ValueError(f"residual_dtype must be one of {list(_RESIDUAL_KIND)}, got {residual_dtype}")
    if codes is None:
        grid = (-1, 1.0, 0, 0, 0)
    else:
        if ep.out_kind != _OUT_KIND[torch.float32]:
            raise ValueError("codes: a second (codes) output needs an fp32-output epilogue")
        inv = float(torch.reciprocal(torch.tensor(float(codes.scale), dtype=torch.float32)))
        grid = (_OUT_KIND[codes.dtype], inv, int(codes.zero_point), int(codes.qmin), int(codes.qmax))
    return (ep.out_kind, ep.act_zero_point, ep.weight_zero_point, ep.weight_scale, ep.act_scale, ep.bias,
            -1 if residual_dtype is None else _RESIDUAL_KIND[residual_dtype], ep.residual_scale,
            ep.residual_zero_point, ep.activation, ep.out_scale, ep.out_zero_point, ep.quant_min, ep.quant_max) + grid


class PreparedIntCall:
    """A native ``_C.IntPreparedCpu`` (csrc/bind/int_prepared.cpp): weight and epilogue checked and
    bound once; each call checks only the activation, the residual and the buffers."""

    __slots__ = ("_native", "epilogue", "codes")

    def __call__(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None):
        """The output (into ``out`` when given); ``(output, codes)`` when prepared with ``codes``."""
        y, q = self._native(x, residual, out)
        return y if q is None else (y, q)

    def call_into(self, x: torch.Tensor, residual: Optional[torch.Tensor], out: Optional[torch.Tensor],
                  codes: Optional[torch.Tensor]):
        """``(output, codes or None)`` written into the given buffers (None: allocated)."""
        return self._native(x, residual, out, codes)


class PreparedIntConv(PreparedIntCall):
    """One integer NHWC conv with everything but the activation bound: the weight packed into
    panels (or kept as the depthwise kernel's [C, kh, kw, 1]), the geometry, the epilogue
    (:class:`BoundEpilogue`) and the micro-kernel ISA (``ZSQ_CPU_INT_ISA`` read when prepared).
    ``conv(x, residual=None, out=None)``: ``x`` int8 / uint8 NHWC ``[B, H, W, C]`` codes,
    ``residual`` the NHWC tensor the epilogue adds (of the dtype it was prepared for); returns the
    NHWC output. Made by :func:`prepare_conv`."""

    __slots__ = ("depthwise", "out_channels")

    def __init__(self, w: torch.Tensor, epilogue: BoundEpilogue, stride, padding, dilation, groups: int,
                 pad_value: int, residual_dtype: Optional[torch.dtype], codes: Optional[CodesGrid]) -> None:
        o, kh, kw, cg = w.shape
        geometry = [int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]), int(dilation[0]),
                    int(dilation[1])]
        self.epilogue, self.codes, self.out_channels = epilogue, codes, o
        self.depthwise = groups == o and cg == 1  # the depthwise kernel's case: groups == C == O
        if self.depthwise:
            weight, colsum, mode = w.contiguous(), None, 1
        else:
            packed = pack_weight(w, groups=groups)
            weight, colsum, mode = packed.panels, packed.colsum, 0
        self._native = _C.IntPreparedCpu(mode, weight, colsum, o, kh * kw * cg, kh, kw, geometry, int(groups),
                                         int(pad_value), *_native_args(epilogue, residual_dtype, codes),
                                         isa_code())


class PreparedIntLinear(PreparedIntCall):
    """One integer GEMM ``a [M, K] x w [N, K]^T`` with the weight packed once and the epilogue
    bound (see :class:`PreparedIntConv`); ``linear(a, residual=None, out=None)`` with ``a`` int8 /
    uint8 ``[M, K]`` and ``residual`` ``[M, N]``. Made by :func:`prepare_linear`."""

    __slots__ = ("out_features",)

    def __init__(self, packed: PackedWeight, epilogue: BoundEpilogue, residual_dtype: Optional[torch.dtype],
                 codes: Optional[CodesGrid]) -> None:
        self.epilogue, self.codes, self.out_features = epilogue, codes, packed.n
        self._native = _C.IntPreparedCpu(2, packed.panels, packed.colsum, packed.n, packed.k, 1, 1, [1, 1, 0, 0, 1, 1],
                                         1, 0, *_native_args(epilogue, residual_dtype, codes), isa_code())


def _bind(epilogue, residual_dtype) -> BoundEpilogue:
    if isinstance(epilogue, BoundEpilogue):
        return epilogue
    if epilogue is not None and not isinstance(epilogue, Epilogue):
        raise TypeError(f"epilogue must be an Epilogue, a BoundEpilogue or None, got {type(epilogue).__name__}")
    if epilogue is not None and epilogue.residual is not None:
        raise ValueError("epilogue.residual must be None when preparing: pass the residual to each call")
    return BoundEpilogue.bind(epilogue, residual_dtype=residual_dtype)


def prepare_conv(w: torch.Tensor, epilogue: Optional[Epilogue] = None, *, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), groups: int = 1, pad_value: int = 0, residual_dtype: Optional[torch.dtype] = None,
                 codes: Optional[CodesGrid] = None) -> PreparedIntConv:
    """A :class:`PreparedIntConv` for ``w`` int8 OHWI ``[O, kh, kw, C/groups]`` (what
    ``qconv2d_nhwc`` takes) and ``epilogue`` without its residual; ``residual_dtype``: the dtype
    of the residual the calls will pass (an int8 / uint8 one is dequantised with the epilogue's
    ``residual_scale`` / ``residual_zero_point``). ``pad_value``: the code of a zero input (the
    activation zero point). ``codes``: also write the fp32 output as codes of this grid in the
    same pass (calls then return ``(output, codes)``)."""
    if _C is None or not hasattr(_C, "IntPreparedCpu"):
        raise RuntimeError("prepare_conv needs the C++ extension zsq_engine._C, which is not built")
    if not isinstance(w, torch.Tensor) or w.dtype != torch.int8 or w.dim() != 4 or w.device.type != "cpu":
        raise ValueError(f"w must be an int8 CPU tensor [O, kh, kw, C/groups], got "
                         f"{getattr(w, 'dtype', type(w).__name__)} {tuple(getattr(w, 'shape', ()))}")
    return PreparedIntConv(w, _bind(epilogue, residual_dtype), stride, padding, dilation, int(groups), pad_value,
                           residual_dtype, codes)


def prepare_linear(w: torch.Tensor, epilogue: Optional[Epilogue] = None, *, w_packed: bool = False,
                   k: Optional[int] = None, residual_dtype: Optional[torch.dtype] = None,
                   codes: Optional[CodesGrid] = None) -> PreparedIntLinear:
    """A :class:`PreparedIntLinear` for ``w`` int8 ``[N, K]`` (or packed int4 uint8
    ``[N, ceil(k/2)]`` with ``w_packed``); arguments as :func:`prepare_conv`."""
    if _C is None or not hasattr(_C, "IntPreparedCpu"):
        raise RuntimeError("prepare_linear needs the C++ extension zsq_engine._C, which is not built")
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.device.type != "cpu":
        raise ValueError(f"w must be a 2-D CPU tensor [N, K], got {tuple(getattr(w, 'shape', ()))}")
    return PreparedIntLinear(pack_weight(w, w_packed=w_packed, k=k), _bind(epilogue, residual_dtype), residual_dtype,
                             codes)


if _C is not None and hasattr(_C, "int_gemm_cpu"):
    register("qgemm", "cpu")(_qgemm)
    register("int_mm", "cpu")(_int_mm)
    register("qconv2d_nhwc", "cpu")(_qconv2d_nhwc)
