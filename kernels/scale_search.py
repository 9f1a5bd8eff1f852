"""Fused Lp clipping search (BRECQ 'mse' / Genie-M step init): all candidates x all channels in
one kernel launch.

Steps (matching ``zsq_engine.ops.scale_search.reference``):

1. channel min/max with ``torch.aminmax`` on the channel-major ``[C, M]`` view;
2. the candidate table: ratios ``1 - 0.01 i`` (fp64 -> fp32 as the reference's python float),
   per-(channel, candidate) ``scale``, ``1/scale`` and ``zero_point`` from the min-max formulas,
   computed with the same torch ops as the reference so they are bit-identical. These are tiny
   ``[C, N]`` tensors;
3. ONE Triton launch: program = (channel, slice of the channel's M elements). It walks the
   candidates in blocks of BLOCK_CAND and, per block, its slice in chunks of BLOCK_E, building
   ``[BLOCK_CAND, BLOCK_E]`` register tiles of ``|x - fq(x)|^p`` (``exp2(p*log2|e|)``, e == 0
   handled; ``e*e`` when p == 2) accumulated in fp32. Each x chunk is re-read once per
   candidate block (from L1/L2: slices are a few thousand elements) instead of keeping N
   accumulators live. Partials go to ``[C, num_slices, N]``;
4. finish in torch: sum over slices, divide by M (the mean), first minimum per channel
   (``argmin``; NaN/inf errors never win, like ``err < best`` in the reference).

The search is compute bound (~20 flops and two MUFU ops per element and candidate), so the
channel-major copy that makes every slice contiguous (only when axis is not the leading dim)
costs little next to it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from . import _common as cm
from ._common import clamp_nan, pow_nonneg, round_half_even

# [BLOCK_CAND, BLOCK_E] = [16, 128] tiles: 16 fp32 per thread with 4 warps, and 16 candidates
# share each loaded x chunk.
BLOCK_CAND = 16
BLOCK_E = 128
# Minimum slice of a channel per program on the GPU (x N candidates of work each).
MIN_SLICE = 2048


@triton.jit
def _lp_error_kernel(
        x_ptr, scale_ptr, inv_ptr, zp_ptr, part_ptr,
        M, N, num_slices, slice_len, quant_min, quant_max, p,
        P_IS_TWO: tl.constexpr, BLOCK_CAND: tl.constexpr, BLOCK_E: tl.constexpr, USE_INT64: tl.constexpr):
    pid = tl.program_id(0)
    sl = pid % num_slices
    ch = pid // num_slices
    row = ch
    if USE_INT64:
        row = row.to(tl.int64)
    row_ptr = x_ptr + row * M
    e_start = sl * slice_len
    e_end = tl.minimum(e_start + slice_len, M)
    cand_base = ch * N
    out_base = (ch * num_slices + sl) * N
    cb = 0
    while cb < N:
        cand = cb + tl.arange(0, BLOCK_CAND)
        cmask = cand < N
        s = tl.load(scale_ptr + cand_base + cand, mask=cmask, other=1.0)[:, None]
        inv = tl.load(inv_ptr + cand_base + cand, mask=cmask, other=1.0)[:, None]
        zp = tl.load(zp_ptr + cand_base + cand, mask=cmask, other=0.0)[:, None]
        acc = tl.zeros((BLOCK_CAND, BLOCK_E), dtype=tl.float32)
        e0 = e_start
        while e0 < e_end:
            offs = e0 + tl.arange(0, BLOCK_E)
            emask = offs < e_end
            x = tl.load(row_ptr + offs, mask=emask, other=0.0).to(tl.float32)[None, :]
            q = clamp_nan(round_half_even(x * inv) + zp, quant_min, quant_max)
            err = tl.abs(x - (q - zp) * s)
            if P_IS_TWO:
                err_p = err * err
            else:
                err_p = pow_nonneg(err, p)
            acc += tl.where(emask[None, :], err_p, 0.0)
            e0 += BLOCK_E
        tl.store(part_ptr + out_base + cand, tl.sum(acc, axis=1), mask=cmask)
        cb += BLOCK_CAND


def _candidate_table(xmin: torch.Tensor, xmax: torch.Tensor, quant_min: int, quant_max: int,
                     num_candidates: int, symmetric: bool, eps: float):
    """scale, zero_point of every (channel, candidate) as fp32 [C, N], by the reference formulas."""
    ratios = (1.0 - 0.01 * torch.arange(num_candidates, dtype=torch.float64, device=xmin.device)).float()
    lo = torch.clamp(xmin[:, None] * ratios[None, :], max=0.0)
    hi = torch.clamp(xmax[:, None] * ratios[None, :], min=0.0)
    if symmetric:
        half_levels = (quant_max - quant_min) / 2.0
        scale = torch.clamp(torch.maximum(-lo, hi) / half_levels, min=eps)
        zp_value = 0 if quant_min < 0 else (quant_min + quant_max + 1) // 2
        zero_point = torch.full_like(scale, float(zp_value))
    else:
        scale = torch.clamp((hi - lo) / float(quant_max - quant_min), min=eps)
        zero_point = torch.clamp(quant_min - torch.round(lo / scale), quant_min, quant_max)
    return scale.contiguous(), zero_point.contiguous()


def scale_search(x: torch.Tensor, quant_min: int, quant_max: int, axis: Optional[int] = 0,
                 num_candidates: int = 80, p: float = 2.4, symmetric: bool = False, eps: float = 1e-8
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale fp32 [C], zero_point fp32 [C]) minimising mean |x - fq(x)|^p per channel over the
    clipping ratios 1.0, 0.99, ... (the first candidate on ties). ``axis=None``: C = 1."""
    cm.check_float("x", x)
    cm.check_quant_range(quant_min, quant_max)
    num_candidates = cm.check_int("num_candidates", num_candidates)
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    p = cm.check_number("p", p)
    eps = cm.check_number("eps", eps)
    axis = cm.normalize_axis(axis, x.dim())
    if x.numel() == 0:
        raise ValueError("x must not be empty")
    x = x.detach()
    x2d = x.reshape(1, -1) if axis is None else x.movedim(axis, 0).reshape(x.shape[axis], -1)
    x2d = x2d.contiguous()
    C, M = x2d.shape
    xmin, xmax = torch.aminmax(x2d, dim=1)
    scale, zero_point = _candidate_table(xmin.float(), xmax.float(), quant_min, quant_max, num_candidates,
                                         bool(symmetric), eps)
    inv = torch.reciprocal(scale)

    if x.device.type == "cuda":
        want = cm.cdiv(cm.target_programs(x.device), C)
        num_slices = max(1, min(want, M // MIN_SLICE))
    else:
        num_slices = max(1, min(cm.cdiv(cm.INTERPRETER_PROGRAMS, C), cm.cdiv(M, BLOCK_E)))
    slice_len = cm.cdiv(cm.cdiv(M, num_slices), BLOCK_E) * BLOCK_E
    num_slices = cm.cdiv(M, slice_len)
    part = torch.empty((C, num_slices, num_candidates), dtype=torch.float32, device=x.device)
    with cm.on_device(x2d):
        _lp_error_kernel[(C * num_slices,)](
            x2d, scale, inv, zero_point, part,
            M, num_candidates, num_slices, slice_len, float(quant_min), float(quant_max), p,
            P_IS_TWO=p == 2.0, BLOCK_CAND=BLOCK_CAND, BLOCK_E=BLOCK_E,
            USE_INT64=C * M + slice_len >= 2 ** 31 - 1, **cm.launch_kwargs())

    err = part.sum(1) / M
    err = torch.where(err < float("inf"), err, torch.full_like(err, float("inf")))  # NaN never wins
    best = torch.argmin(err, dim=1, keepdim=True)
    found = err.gather(1, best).squeeze(1) < float("inf")
    best_scale = torch.where(found, scale.gather(1, best).squeeze(1), torch.ones_like(xmin, dtype=torch.float32))
    best_zp = torch.where(found, zero_point.gather(1, best).squeeze(1),
                          torch.zeros_like(xmin, dtype=torch.float32))
    return best_scale, best_zp
