"""The integer depthwise conv on the CUDA kernels of the extension as the 'cuda' ``qconv2d_nhwc``
(``_C.int_depthwise_conv2d_nhwc_cuda``, csrc/cuda/depthwise_dp4a.cu): one thread per output
pixel and 4 channels, the 4 x 4 bytes of 4 taps x 4 channels transposed in registers so each
``__dp4a`` reduces 4 taps of one channel, the fused epilogue in the same kernel. Depthwise convs
(``groups == C == O``) run there; for CUDA tensors this backend is tried before Triton, and every
other conv goes to this family's Triton kernel (or to the reference where Triton cannot run).

The weight is re-laid once as int32 words ``[ceil(kh*kw / 4), C]`` plus per-channel sums
(``_C.int_depthwise_weight_relayout_cuda``, which also reads packed int4 depthwise weights)
and cached on the weight tensor like the CPU panels (:func:`..int_gemm.cpu.cached_for_tensor`).
"""
from __future__ import annotations

from typing import Tuple

import torch

from zsq_engine._ext import get_extension

from ..dispatch import backend_status, register
from ..int_gemm.cpu import bind_epilogue, cached_for_tensor
from . import reference
from . import triton as _triton

_C = get_extension()


def relayout_depthwise(w: torch.Tensor, *, w_int4: bool = False, taps: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(words int32 [ceil(taps/4), C], wsum int32 [C]) of a CUDA depthwise weight: int8
    [C, kh, kw, 1], or packed int4 uint8 [C, ceil(taps/2)] with ``w_int4`` (then ``taps`` =
    kh * kw is required)."""
    if not w_int4:
        taps = w[0].numel()
    if taps < 1:
        raise ValueError(f"taps must be kh * kw >= 1 for a packed int4 weight, got {taps}")
    return _C.int_depthwise_weight_relayout_cuda(w, int(taps), bool(w_int4))


def _other_conv(*args):
    # the family's own Triton kernel where Triton runs, else its reference
    if _triton.qconv2d_nhwc is not None and backend_status("triton")[0]:
        return _triton.qconv2d_nhwc(*args)
    return reference.qconv2d_nhwc(*args)


def _qconv2d_nhwc(x, w, stride, padding, dilation, groups, epilogue, pad_value):
    o, kh, kw, cg = w.shape
    if not (groups == x.shape[3] == o and cg == 1):
        return _other_conv(x, w, stride, padding, dilation, groups, epilogue, pad_value)
    words, wsum = cached_for_tensor(w, ("cuda_depthwise",), lambda: relayout_depthwise(w))
    return _C.int_depthwise_conv2d_nhwc_cuda(x, words, wsum, kh, kw, stride[0], stride[1], padding[0],
                                             padding[1], dilation[0], dilation[1], pad_value,
                                             bind_epilogue(epilogue, x.device),
                                             None if epilogue is None else epilogue.residual)


if _C is not None and hasattr(_C, "int_depthwise_conv2d_nhwc_cuda"):
    register("qconv2d_nhwc", "cuda", cuda_preference=("cuda", "triton"))(_qconv2d_nhwc)
