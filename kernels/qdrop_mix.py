"""QDrop input mixing in one pass: ``out = x_q`` where ``uniform(seed, i + offset) < p`` else
``x_fp``, the uniform recomputed from the element index (:mod:`.rng`, bit-identical to the
reference), so no mask tensor is drawn or stored. Pure bandwidth: read two tensors, write one."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cdiv, check_float, check_same, on_device
from .rng import offset_arg, seed_arg, uniform_at

_BLOCK = 2048


@triton.jit
def _qdrop_mix_kernel(xq_ptr, xf_ptr, out_ptr, numel, p, seed_bits, offset_bits,
                      BLOCK: tl.constexpr, USE_INT64: tl.constexpr):
    pid = tl.program_id(0)
    if USE_INT64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    keep = uniform_at(offs, seed_bits, offset_bits) < p
    a = tl.load(xq_ptr + offs, mask=inside)
    b = tl.load(xf_ptr + offs, mask=inside)
    tl.store(out_ptr + offs, tl.where(keep, a, b), mask=inside)


def qdrop_mix(x_q: torch.Tensor, x_fp: torch.Tensor, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    """The reference primitive's contract (float tensors of one shape, dtype and device)."""
    check_float("x_q", x_q)
    check_float("x_fp", x_fp)
    check_same("x_q", x_q, "x_fp", x_fp)
    if x_fp.dtype != x_q.dtype:
        raise TypeError(f"x_fp must have the dtype of x_q ({x_q.dtype}), got {x_fp.dtype}")
    x_q, x_fp = x_q.contiguous(), x_fp.contiguous()
    out = torch.empty_like(x_q)
    numel = x_q.numel()
    if numel:
        with on_device(out):
            _qdrop_mix_kernel[(cdiv(numel, _BLOCK),)](x_q, x_fp, out, numel, float(p), seed_arg(seed),
                                                     offset_arg(offset), BLOCK=_BLOCK,
                                                     USE_INT64=numel + _BLOCK >= 2 ** 31)
    return out
