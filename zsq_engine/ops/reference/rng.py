"""Counter-based uniform random numbers shared by every backend.

``uniform(seed, index) = (mix32(index mod 2^32 XOR mix32(seed)) >> 8) * 2^-24`` where ``mix32`` is
a 32-bit integer finaliser (xor-shift / multiply, "lowbias32"). Being a pure function of
(seed, element index) it needs no state, is reproducible from the seed alone, and gives the same
bits in the PyTorch reference, the C++ kernels and the Triton kernels, so a QDrop mask never
has to be materialised or transferred. Here the uint32 arithmetic is emulated in int64.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
MUL1 = 0x7FEB352D
MUL2 = 0x846CA68B


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2^32 without int64 overflow: split c into 16-bit halves.
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, MUL1)
    x = x ^ (x >> 15)
    x = _mul32(x, MUL2)
    return x ^ (x >> 16)


def mix32_int(v: int) -> int:
    """Python-int version of :func:`mix32` (for seeds)."""
    v &= MASK32
    v ^= v >> 16
    v = (v * MUL1) & MASK32
    v ^= v >> 15
    v = (v * MUL2) & MASK32
    return v ^ (v >> 16)


def uniform(seed: int, numel: int, offset: int = 0, device=None) -> torch.Tensor:
    """fp32 uniforms in [0, 1) for element indices offset .. offset + numel - 1."""
    idx = (torch.arange(numel, dtype=torch.int64, device=device) + offset) & MASK32
    bits = mix32(idx ^ mix32_int(seed))
    return (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))
