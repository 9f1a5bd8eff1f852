"""The packed int4 format (two values per byte along the last dimension).

Element ``2i`` goes to the LOW nibble (bits 0-3) of byte ``i`` and element ``2i + 1`` to the
HIGH nibble (bits 4-7); signed values are stored as two's-complement nibbles; an odd length is
padded with a zero nibble. These two functions define the format: the op layer uses them as the
reference of ``pack_int4`` / ``unpack_int4`` and the kernels to unpack weights on the host.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
