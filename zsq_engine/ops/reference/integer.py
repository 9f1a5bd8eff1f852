"""Reference integer arithmetic: int8 GEMM, int4 packing and integer conv2d.

Products of 8-bit integers summed in fp64 are exact (every partial sum stays far below 2^53),
so computing in fp64 and casting to int32 is an exact oracle on any device.

int4 packing (along the last dimension): element ``2i`` goes to the LOW nibble (bits 0-3) of
byte ``i`` and element ``2i + 1`` to the HIGH nibble (bits 4-7); signed values are stored as
two's-complement nibbles; an odd length is padded with a zero nibble.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a.double(), b.double()).to(torch.int32)


def pack_int4(x: torch.Tensor) -> torch.Tensor:
    v = x.to(torch.int16) & 0xF
    if v.shape[-1] % 2:
        v = F.pad(v, (0, 1))
    return (v[..., 0::2] | (v[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, k: int, signed: bool = True) -> torch.Tensor:
    p = packed.to(torch.int16)
    nibbles = torch.stack((p & 0xF, p >> 4), dim=-1).flatten(-2)[..., :k]
    if signed:
        return torch.where(nibbles >= 8, nibbles - 16, nibbles).to(torch.int8)
    return nibbles.to(torch.uint8)


def conv2d_int(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0, dilation=1, groups=1,
               layout: str = "NCHW") -> torch.Tensor:
    xd = x.double()
    if layout == "NHWC":
        xd = xd.permute(0, 3, 1, 2)
    out = F.conv2d(xd, weight.double(), None, stride, padding, dilation, groups).to(torch.int32)
    if layout == "NHWC":
        out = out.permute(0, 2, 3, 1).contiguous()
    return out
