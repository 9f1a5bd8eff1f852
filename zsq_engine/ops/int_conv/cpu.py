"""The integer NHWC conv on the C++ extension as the 'cpu' ``qconv2d_nhwc`` (an implicit GEMM on
the GEMM's packed weight panels, or the depthwise kernel when ``groups == C == O``), and its
prepared call :func:`prepare_conv`. Packing, its cache, the ISA switch and the bound epilogue are
the GEMM's (:mod:`..int_gemm.cpu`)."""
from __future__ import annotations

from typing import Optional

import torch

from ...opspec.epilogue import Epilogue
from ...opspec.qparams import ActQParams
from ..dispatch import register
from ..int_gemm.cpu import (PreparedIntCall, _C, bind_epilogue, bind_for_prepare, cached_pack, isa_name,
                            pack_weight, require_prepared)


def _qconv2d_nhwc(x, w, stride, padding, dilation, groups, epilogue, pad_value):
    o, kh, kw, cg = w.shape
    geometry = (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    bound = bind_epilogue(epilogue)
    residual = None if epilogue is None else epilogue.residual
    if groups == x.shape[3] == o and cg == 1:
        return _C.int_depthwise_conv2d_nhwc_cpu(x, w, *geometry, pad_value, bound, residual)
    packed = cached_pack(w, groups=groups)
    return _C.int_conv2d_nhwc_cpu(x, packed.panels, packed.colsum, o, kh, kw, *geometry, groups, pad_value, bound,
                                  residual, isa=isa_name())


class PreparedIntConv(PreparedIntCall):
    """One integer NHWC conv with everything but the activation bound: the weight packed into
    panels (or kept as the depthwise kernel's [C, kh, kw, 1]), the geometry, the epilogue (a
    ``_C.IntEpilogue``) and the micro-kernel ISA (``ZSQ_CPU_INT_ISA`` read when prepared).
    ``conv(x, residual=None, out=None)``: ``x`` int8 / uint8 NHWC ``[B, H, W, C]`` codes,
    ``residual`` the NHWC tensor the epilogue adds (of the dtype it was prepared for); returns the
    NHWC output. Made by :func:`prepare_conv`."""

    __slots__ = ("depthwise", "out_channels")

    def __init__(self, w: torch.Tensor, epilogue, stride, padding, dilation, groups: int, pad_value: int,
                 codes: Optional[ActQParams]) -> None:
        o, kh, kw, cg = w.shape
        geometry = [int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]), int(dilation[0]),
                    int(dilation[1])]
        self.epilogue, self.codes, self.out_channels = epilogue, codes, o
        self.depthwise = groups == o and cg == 1  # the depthwise kernel's case: groups == C == O
        if self.depthwise:
            weight, colsum, kind = w.contiguous(), None, "depthwise"
        else:
            packed = pack_weight(w, groups=groups)
            weight, colsum, kind = packed.panels, packed.colsum, "conv"
        self._native = _C.IntPreparedCpu(kind, weight, colsum, o, kh * kw * cg, kh, kw, geometry, int(groups),
                                         int(pad_value), epilogue, isa_name())


def prepare_conv(w: torch.Tensor, epilogue: Optional[Epilogue] = None, *, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), groups: int = 1, pad_value: int = 0, residual_dtype: Optional[torch.dtype] = None,
                 codes: Optional[ActQParams] = None) -> PreparedIntConv:
    """A :class:`PreparedIntConv` for ``w`` int8 OHWI ``[O, kh, kw, C/groups]`` (what
    ``qconv2d_nhwc`` takes) and ``epilogue`` without its residual; ``residual_dtype``: the dtype
    of the residual the calls will pass (an int8 / uint8 one is dequantised with the epilogue's
    ``residual_scale`` / ``residual_zero_point``). ``pad_value``: the code of a zero input (the
    activation zero point). ``codes``: also write the fp32 output as codes of this activation
    grid in the same pass (calls then return ``(output, codes)``)."""
    require_prepared("prepare_conv")
    if not isinstance(w, torch.Tensor) or w.dtype != torch.int8 or w.dim() != 4 or w.device.type != "cpu":
        raise ValueError(f"w must be an int8 CPU tensor [O, kh, kw, C/groups], got "
                         f"{getattr(w, 'dtype', type(w).__name__)} {tuple(getattr(w, 'shape', ()))}")
    return PreparedIntConv(w, bind_for_prepare(epilogue, residual_dtype, codes), stride, padding, dilation,
                           int(groups), pad_value, codes)


if _C is not None and hasattr(_C, "int_conv2d_nhwc_cpu"):
    register("qconv2d_nhwc", "cpu")(_qconv2d_nhwc)
