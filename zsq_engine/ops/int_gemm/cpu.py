"""The integer GEMM on the C++ extension as the 'cpu' ``qgemm`` and ``int_mm``, and what the CPU
integer conv (``..int_conv.cpu``) shares with it: the weight packing, its cache, the bound epilogue
(:func:`bind_epilogue`) and the prepared call (:func:`prepare_linear`).

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
from typing import Callable, NamedTuple, Optional

import torch

from zsq_engine._ext import get_extension

from ...opspec.dtypes import QUANT_OUT_DTYPES
from ...opspec.epilogue import Epilogue
from ...opspec.qparams import ActQParams
from ..dispatch import register

_C = get_extension()

ISA_ENV = "ZSQ_CPU_INT_ISA"
ISAS = ("auto", "scalar", "avx2", "avx512_vnni")
_RESIDUAL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8)


def isa_name() -> str:
    """The micro-kernel ISA ``ZSQ_CPU_INT_ISA`` asks for (``'auto'`` when unset)."""
    name = os.environ.get(ISA_ENV, "").strip().lower() or "auto"
    if name not in ISAS:
        raise ValueError(f"{ISA_ENV}={name!r} is not one of {', '.join(ISAS)}")
    return name


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
    doc). ``key`` names the packed form, so one weight can hold several (the cuda conv uses
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


def bind_epilogue(ep: Optional[Epilogue], device: Optional[torch.device] = None, *,
                  residual_dtype: Optional[torch.dtype] = None, codes: Optional[ActQParams] = None):
    """``ep`` bound once for the native calls: a ``_C.IntEpilogue`` (csrc/bind/int_epilogue.h)
    with named fields, fp32 / int32 tensors already contiguous (python-number scales become
    tensors on ``device``, the CPU by default). ``None`` binds the plain int32 accumulator.
    ``residual_dtype``: the dtype of the residual the calls pass (``ep.residual``'s when None;
    an integer residual binds ``ep.residual_scale`` / ``residual_zero_point``). ``codes``: an
    activation grid the fp32 output is also written in, as codes, in the same pass (prepared
    calls only)."""
    if residual_dtype is None and ep is not None and ep.residual is not None:
        residual_dtype = ep.residual.dtype
    if residual_dtype is not None and residual_dtype not in _RESIDUAL_DTYPES:
        raise ValueError(f"residual_dtype must be one of {list(_RESIDUAL_DTYPES)}, got {residual_dtype}")
    if ep is None:
        if codes is not None:
            raise ValueError("codes: a second (codes) output needs an fp32-output epilogue")
        if residual_dtype is not None:
            raise ValueError("a residual needs an epilogue that dequantises (not the int32 accumulator)")
        return _C.IntEpilogue()
    ep.validate()
    fields = {"out_dtype": ep.out_dtype, "act_zero_point": ep.act_zero_point}
    if ep.has_weight_zero_point():
        zw = ep.weight_zero_point
        fields["weight_zero_point"] = (zw.detach().to(torch.int32).reshape(-1).contiguous()
                                       if isinstance(zw, torch.Tensor)
                                       else torch.tensor([zw], dtype=torch.int32, device=device))
    if not ep.integer_output:
        fields.update(weight_scale=_f32_vector(ep.weight_scale, device), act_scale=_f32_vector(ep.act_scale, device),
                      activation=ep.activation, residual_zero_point=ep.residual_zero_point)
        if ep.bias is not None:
            fields["bias"] = ep.bias.detach().to(torch.float32).reshape(-1).contiguous()
        if residual_dtype is not None:
            fields["residual_dtype"] = residual_dtype
            if residual_dtype in QUANT_OUT_DTYPES:
                fields["residual_scale"] = _f32_scalar("residual_scale", ep.residual_scale)
        if ep.out_dtype in QUANT_OUT_DTYPES:
            qmin, qmax = ep.quant_range()
            fields.update(out_scale=_f32_scalar("out_scale", ep.out_scale), out_zero_point=ep.out_zero_point,
                          quant_min=qmin, quant_max=qmax)
    elif residual_dtype is not None:
        fields["residual_dtype"] = residual_dtype  # refused by the native checks, with its message
    if codes is not None:
        if ep.out_dtype != torch.float32:
            raise ValueError("codes: a second (codes) output needs an fp32-output epilogue")
        # the kernels multiply by the fp32 reciprocal, as the fake-quant op does
        inv = float(torch.reciprocal(torch.tensor(float(codes.scale), dtype=torch.float32)))
        fields.update(codes_dtype=codes.dtype, codes_inv_scale=inv, codes_zero_point=int(codes.zero_point),
                      codes_min=int(codes.qmin), codes_max=int(codes.qmax))
    return _C.IntEpilogue(**fields)


def _a_format(a: torch.Tensor, a_packed: bool, a_signed: bool) -> str:
    if a_packed:
        return "int4" if a_signed else "uint4"
    return "int8" if a.dtype == torch.int8 else "uint8"


def qgemm_packed(a: torch.Tensor, packed: PackedWeight, epilogue: Optional[Epilogue] = None, *,
                 a_packed: bool = False, a_signed: bool = True) -> torch.Tensor:
    """``qgemm`` with a weight packed once by :func:`pack_weight` (no cache lookup): ``a``
    int8/uint8 [M, K], or packed int4 [M, ceil(K/2)] with ``a_packed``."""
    if packed.groups != 1:
        raise ValueError(f"packed holds {packed.groups} groups; qgemm needs a weight packed with groups=1")
    return _C.int_gemm_cpu(a, _a_format(a, a_packed, a_signed), packed.k, packed.panels, packed.colsum, packed.n,
                           bind_epilogue(epilogue), None if epilogue is None else epilogue.residual, isa=isa_name())


def _qgemm(a, w, epilogue, w_packed, a_packed, a_signed, k):
    packed = cached_pack(w, w_packed=w_packed, k=k)
    return qgemm_packed(a, packed, epilogue, a_packed=a_packed, a_signed=a_signed)


def _int_mm(a, b):
    # b [K, N] is the transposed [N, K] weight; packed panels are cached on b itself
    packed = cached_pack(b, transposed=True)
    return qgemm_packed(a, packed)


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


class PreparedIntLinear(PreparedIntCall):
    """One integer GEMM ``a [M, K] x w [N, K]^T`` with the weight packed once and the epilogue
    bound; ``linear(a, residual=None, out=None)`` with ``a`` int8 / uint8 ``[M, K]`` and
    ``residual`` ``[M, N]``. Made by :func:`prepare_linear`."""

    __slots__ = ("out_features",)

    def __init__(self, packed: PackedWeight, epilogue, codes: Optional[ActQParams]) -> None:
        self.epilogue, self.codes, self.out_features = epilogue, codes, packed.n
        self._native = _C.IntPreparedCpu("gemm", packed.panels, packed.colsum, packed.n, packed.k, 1, 1,
                                         [1, 1, 0, 0, 1, 1], 1, 0, epilogue, isa_name())


def bind_for_prepare(epilogue, residual_dtype: Optional[torch.dtype], codes: Optional[ActQParams]):
    """The bound epilogue of a prepared call: ``epilogue`` an :class:`Epilogue` without its
    residual (bound here), or an already bound ``_C.IntEpilogue``, or None."""
    if _C is not None and isinstance(epilogue, _C.IntEpilogue):
        return epilogue
    if epilogue is not None and not isinstance(epilogue, Epilogue):
        raise TypeError(f"epilogue must be an Epilogue, a bound _C.IntEpilogue or None, got {type(epilogue).__name__}")
    if epilogue is not None and epilogue.residual is not None:
        raise ValueError("epilogue.residual must be None when preparing: pass the residual to each call")
    return bind_epilogue(epilogue, residual_dtype=residual_dtype, codes=codes)


def require_prepared(what: str) -> None:
    if _C is None or not hasattr(_C, "IntPreparedCpu"):
        raise RuntimeError(f"{what} needs the C++ extension zsq_engine._C, which is not built")


def prepare_linear(w: torch.Tensor, epilogue: Optional[Epilogue] = None, *, w_packed: bool = False,
                   k: Optional[int] = None, residual_dtype: Optional[torch.dtype] = None,
                   codes: Optional[ActQParams] = None) -> PreparedIntLinear:
    """A :class:`PreparedIntLinear` for ``w`` int8 ``[N, K]`` (or packed int4 uint8
    ``[N, ceil(k/2)]`` with ``w_packed``) and ``epilogue`` without its residual;
    ``residual_dtype``: the dtype of the residual the calls will pass (an int8 / uint8 one is
    dequantised with the epilogue's ``residual_scale`` / ``residual_zero_point``). ``codes``:
    also write the fp32 output as codes of this activation grid in the same pass (calls then
    return ``(output, codes)``)."""
    require_prepared("prepare_linear")
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.device.type != "cpu":
        raise ValueError(f"w must be a 2-D CPU tensor [N, K], got {tuple(getattr(w, 'shape', ()))}")
    return PreparedIntLinear(pack_weight(w, w_packed=w_packed, k=k), bind_for_prepare(epilogue, residual_dtype, codes),
                             codes)


if _C is not None and hasattr(_C, "int_gemm_cpu"):
    register("qgemm", "cpu")(_qgemm)
    register("int_mm", "cpu")(_int_mm)
