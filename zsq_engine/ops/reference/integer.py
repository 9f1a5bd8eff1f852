"""Reference integer arithmetic: int8 GEMM, int4 packing and integer conv2d.

Products of 8-bit integers summed in fp64 are exact (every partial sum stays far below 2^53),
so computing in fp64 and casting to int32 is an exact oracle on any device.

int4 packing: the format and its two functions are defined in :mod:`zsq_engine.opspec.int4`
(the kernels unpack with them too) and re-exported here as the reference primitives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...opspec.int4 import pack_int4, unpack_int4  # noqa: F401  (reference primitives)


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a.double(), b.double()).to(torch.int32)


def conv2d_int(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0, dilation=1, groups=1,
               layout: str = "NCHW") -> torch.Tensor:
    xd = x.double()
    if layout == "NHWC":
        xd = xd.permute(0, 3, 1, 2)
    out = F.conv2d(xd, weight.double(), None, stride, padding, dilation, groups).to(torch.int32)
    if layout == "NHWC":
        out = out.permute(0, 2, 3, 1).contiguous()
    return out
