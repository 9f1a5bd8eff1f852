"""CUDA integer kernels of the C++ extension as the 'cuda' ``qconv2d_nhwc`` (imported by
:mod:`zsq_engine.ops.backends.cuda`).

The extension holds the depthwise int8 conv with ``__dp4a`` (csrc/cuda/depthwise_dp4a.cu):
one thread per output pixel and 4 channels, the 4 x 4 bytes of 4 taps x 4 channels transposed
in registers so each dp4a reduces 4 taps of one channel, the fused epilogue of
:mod:`zsq_engine.ops.epilogue` in the same kernel. Depthwise convs (``groups == C == O``) run
there; for CUDA tensors this backend is tried before Triton for ``qconv2d_nhwc``, and every
other conv is passed on to the Triton kernel (or to the reference where Triton cannot run).

The weight is re-laid once as int32 words ``[ceil(kh*kw / 4), C]`` plus per-channel sums
(``_C.int_depthwise_weight_relayout_cuda``, which also reads packed int4 depthwise weights)
and cached on the weight tensor like the CPU panels (see :mod:`.cpu_int`).
"""
from __future__ import annotations

from typing import Tuple

import torch

from zsq_engine._ext import get_extension

from ..dispatch import backend_status, implementations, register
from .cpu_int import cached_for_tensor, epilogue_args

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
    impls = implementations("qconv2d_nhwc")
    if "triton" in impls and backend_status("triton")[0]:
        return impls["triton"](*args)
    return impls["reference"](*args)


def _qconv2d_nhwc(x, w, stride, padding, dilation, groups, epilogue, pad_value):
    o, kh, kw, cg = w.shape
    if not (groups == x.shape[3] == o and cg == 1):
        return _other_conv(x, w, stride, padding, dilation, groups, epilogue, pad_value)
    words, wsum = cached_for_tensor(w, ("cuda_depthwise",), lambda: relayout_depthwise(w))
    return _C.int_depthwise_conv2d_nhwc_cuda(x, words, wsum, kh, kw, stride[0], stride[1], padding[0],
                                             padding[1], dilation[0], dilation[1], pad_value,
                                             *epilogue_args(epilogue, x.device))


if _C is not None and hasattr(_C, "int_depthwise_conv2d_nhwc_cuda"):
    register("qconv2d_nhwc", "cuda", cuda_preference=("cuda", "triton"))(_qconv2d_nhwc)
