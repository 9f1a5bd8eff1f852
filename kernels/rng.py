"""Counter-based uniforms in Triton, bit-identical to ``zsq_engine.ops.reference.rng``.

``uniform(seed, i) = (mix32((i mod 2^32) XOR mix32(seed)) >> 8) * 2^-24`` with ``mix32`` the
"lowbias32" xor-shift/multiply finaliser. The kernels call :func:`uniform_at` on the element
offsets they already have, so a QDrop mask is recomputed wherever it is needed (forward and
backward) and never stored. Arithmetic is native uint32: multiplies wrap mod 2^32 and ``>>`` is
a logical shift, exactly the reference's masked int64 emulation. ``mix32(seed)`` is a per-call
constant, hashed once on the host and passed as an int32 bit pattern (one kernel signature for
any seed).

The :func:`uniform` launcher (one program per BLOCK elements, 1-D grid) exists for tests and for
callers that want the raw stream.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import as_i32_bits, cdiv, check_device, check_int, on_device

_MASK32 = 0xFFFFFFFF
_MUL1 = 0x7FEB352D
_MUL2 = 0x846CA68B
_BLOCK = 1024


def mix32_host(v: int) -> int:
    """The finaliser on a python int (for seeds)."""
    v &= _MASK32
    v ^= v >> 16
    v = (v * _MUL1) & _MASK32
    v ^= v >> 15
    v = (v * _MUL2) & _MASK32
    return v ^ (v >> 16)


def seed_arg(seed: int) -> int:
    """Kernel argument for ``seed``: mix32(seed) as int32 bits."""
    return as_i32_bits(mix32_host(check_int("seed", seed)))


def offset_arg(offset: int) -> int:
    """Kernel argument for ``offset``: offset mod 2^32 as int32 bits."""
    return as_i32_bits(check_int("offset", offset))


@triton.jit
def mix32(x):
    """lowbias32 on a uint32 tensor."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def uniform_at(offs, seed_bits, offset_bits):
    """fp32 uniforms in [0, 1) for element indices ``offs + offset`` (any int tensor; only the
    low 32 bits matter). ``seed_bits`` / ``offset_bits``: int32 scalars from seed_arg/offset_arg."""
    idx = offs.to(tl.uint32) + offset_bits.to(tl.uint32, bitcast=True)
    bits = mix32(idx ^ seed_bits.to(tl.uint32, bitcast=True))
    return (bits >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _uniform_kernel(out_ptr, numel, seed_bits, offset_bits, BLOCK: tl.constexpr, USE_INT64: tl.constexpr):
    pid = tl.program_id(0)
    if USE_INT64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, uniform_at(offs, seed_bits, offset_bits), mask=offs < numel)


def uniform(seed: int, numel: int, offset: int = 0, device=None) -> torch.Tensor:
    """fp32 [numel] uniforms for indices offset .. offset + numel - 1 (as the reference)."""
    numel = check_int("numel", numel)
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    out = torch.empty(numel, dtype=torch.float32, device=device)
    check_device("out", out)
    if numel:
        with on_device(out):
            _uniform_kernel[(cdiv(numel, _BLOCK),)](out, numel, seed_arg(seed), offset_arg(offset),
                                                    BLOCK=_BLOCK, USE_INT64=numel + _BLOCK >= 2 ** 31)
    return out
