"""Fused fake-quant kernels: STE forward/backward, LSQ/LSQ+ backward, and QDrop mixing.

Numerics are bit-identical to ``zsq_engine.ops.fake_quant.reference``:
``inv = 1/scale`` (IEEE division, ``tl.div_rn``), ``q = round_half_even(x_fp32 * inv) + zp``,
clamp, ``y = (q - zp) * scale`` as an fp32 product rounded to x's dtype (what the reference's
fp64 product becomes after torch's fp64 -> fp16/bf16 conversion, which goes through fp32).
The STE mask and the QDrop keep-mask (``uniform(seed, i + offset) < p``, ``i`` the row-major
index in the contiguous tensor) are recomputed from x in the backward; nothing is saved.

Grid / blocking (see ``_common``): x is viewed as ``[outer, C, inner]`` and cut into 3-D tiles
``[BLOCK_N, BLOCK_C, BLOCK_J]`` of ~2048 elements shaped by ``inner``:

* elementwise kernels (forward, STE backward, their QDrop versions): one program per tile on a
  1-D grid, tile ids ordered j fastest, so neighbouring programs stream neighbouring memory;
  the channel parameters are one ``[BLOCK_C]`` load per program.
* LSQ backward: ONE launch writes ``dx`` and fp32 partial sums of dscale / dzero_point.
  Programs are (channel block) x (split of that block's tiles); each loops over its tiles,
  accumulating in ``[BN, BC, BJ]`` fp32 registers, and writes ``[BLOCK_C]`` partials into
  ``[C, num_splits]``. Per-tensor (C = 1) is split over ``inner`` into ~4 programs per SM;
  per-channel weights (outer = 1) get a few programs per channel row; NCHW activations
  (axis = 1) split over the batch; ``axis`` = last dim is a ``[outer, C]`` tile with channels
  along the contiguous dim. ``partials.sum(1)`` finishes. No atomics: deterministic.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from . import _common as cm
from ._common import (clamp_nan, dequant_to_out, round_half_even, split_tile_range, sum_nj, tile_offsets, to_out)
from .rng import offset_arg, seed_arg, uniform_at


@triton.jit
def _fake_quant_elementwise_kernel(
        x_ptr, dy_ptr, out_ptr, scale_ptr, zp_ptr,
        outer, C, inner, num_cblocks, num_jblocks,
        quant_min, quant_max, p, seed_bits, offset_bits,
        BACKWARD: tl.constexpr, QDROP: tl.constexpr, OUT_KIND: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, USE_INT64: tl.constexpr):
    pid = tl.program_id(0)
    jb = pid % num_jblocks
    rest = pid // num_jblocks
    cb = rest % num_cblocks
    nb = rest // num_cblocks
    offs, mask, c = tile_offsets(nb, cb, jb, outer, C, inner, BLOCK_N, BLOCK_C, BLOCK_J, USE_INT64)
    cmask = c < C
    s = tl.load(scale_ptr + c, mask=cmask, other=1.0)
    zp = tl.load(zp_ptr + c, mask=cmask, other=0.0)
    inv = tl.div_rn(tl.full((BLOCK_C,), 1.0, tl.float32), s)
    s = s[None, :, None]
    zp = zp[None, :, None]
    inv = inv[None, :, None]

    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    q = round_half_even(x.to(tl.float32) * inv) + zp
    if BACKWARD:
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0)
        in_range = (q >= quant_min) & (q <= quant_max)
        out = to_out(dy.to(tl.float32) * in_range.to(tl.float32), OUT_KIND)
        if QDROP:
            out = tl.where(uniform_at(offs, seed_bits, offset_bits) < p, out, dy)
    else:
        out = dequant_to_out(clamp_nan(q, quant_min, quant_max) - zp, s, OUT_KIND)
        if QDROP:
            out = tl.where(uniform_at(offs, seed_bits, offset_bits) < p, out, x)
    tl.store(out_ptr + offs, out, mask=mask)


@triton.jit
def _lsq_backward_kernel(
        dy_ptr, x_ptr, dx_ptr, scale_ptr, zp_ptr, dscale_part_ptr, dzp_part_ptr,
        outer, C, inner, num_nblocks, num_jblocks, split_n, per_n, split_j, per_j,
        quant_min, quant_max, grad_factor, p, seed_bits, offset_bits,
        QDROP: tl.constexpr, OUT_KIND: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, USE_INT64: tl.constexpr):
    cb, split, nb_start, jb_start, j_count, num_tiles = split_tile_range(
        tl.program_id(0), split_n, per_n, split_j, per_j, num_nblocks, num_jblocks)

    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    s = tl.load(scale_ptr + c, mask=cmask, other=1.0)
    zp = clamp_nan(round_half_even(tl.load(zp_ptr + c, mask=cmask, other=0.0)), quant_min, quant_max)
    inv = tl.div_rn(tl.full((BLOCK_C,), 1.0, tl.float32), s)
    s = s[None, :, None]
    zp = zp[None, :, None]
    inv = inv[None, :, None]

    acc_scale = tl.zeros((BLOCK_N, BLOCK_C, BLOCK_J), dtype=tl.float32)
    acc_zp = tl.zeros((BLOCK_N, BLOCK_C, BLOCK_J), dtype=tl.float32)
    t = 0
    while t < num_tiles:
        nb = nb_start + t // j_count
        jb = jb_start + t % j_count
        offs, mask, _c = tile_offsets(nb, cb, jb, outer, C, inner, BLOCK_N, BLOCK_C, BLOCK_J, USE_INT64)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy_raw = tl.load(dy_ptr + offs, mask=mask, other=0.0)
        dy = dy_raw.to(tl.float32)
        if QDROP:
            keep = uniform_at(offs, seed_bits, offset_bits) < p
            dy = dy * keep.to(tl.float32)
        q = round_half_even(x * inv) + zp
        below = q < quant_min
        above = q > quant_max
        inside = ~(below | above)
        y = (clamp_nan(q, quant_min, quant_max) - zp) * s
        g_in = dy * (y - x) * inv
        g_out = tl.where(below, dy * (quant_min - zp), dy * (quant_max - zp))
        g_scale = tl.where(inside, g_in, g_out) * grad_factor
        g_zp = tl.where(inside, 0.0, -dy * s * grad_factor)
        acc_scale += tl.where(mask, g_scale, 0.0)
        acc_zp += tl.where(mask, g_zp, 0.0)
        dx = to_out(dy * inside.to(tl.float32), OUT_KIND)
        if QDROP:
            dx = tl.where(keep, dx, dy_raw)
        tl.store(dx_ptr + offs, dx, mask=mask)
        t += 1

    num_splits = split_n * split_j
    part = c * num_splits + split
    tl.store(dscale_part_ptr + part, sum_nj(acc_scale), mask=cmask)
    tl.store(dzp_part_ptr + part, sum_nj(acc_zp), mask=cmask)


# ----------------------------------------------------------------------------- launchers

def _prepare(x, scale, zero_point, quant_min, quant_max, axis):
    cm.check_float("x", x)
    cm.check_quant_range(quant_min, quant_max)
    axis = cm.normalize_axis(axis, x.dim())
    params, dims = cm.channel_params(x, axis, scale=scale, zero_point=zero_point)
    return x.contiguous(), params["scale"], params["zero_point"], dims


def _check_dy(dy, x):
    cm.check_float("dy", dy)
    cm.check_same("x", x, "dy", dy)
    return dy.contiguous()


def _qdrop_args(p, seed, offset):
    return cm.check_number("p", p), seed_arg(seed), offset_arg(offset)


def _elementwise(x, dy, scale, zero_point, quant_min, quant_max, axis, backward, qdrop):
    x, s, zp, (outer, C, inner) = _prepare(x, scale, zero_point, quant_min, quant_max, axis)
    if backward:
        dy = _check_dy(dy, x)
        out = torch.empty(dy.shape, dtype=dy.dtype, device=dy.device)
    else:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    p, seed_bits, offset_bits = qdrop if qdrop is not None else (1.0, 0, 0)
    bn, bc, bj = cm.tile_shape(outer, C, inner)
    nbn, nbc, nbj = cm.cdiv(outer, bn), cm.cdiv(C, bc), cm.cdiv(inner, bj)
    with cm.on_device(x):
        _fake_quant_elementwise_kernel[(nbn * nbc * nbj,)](
            x, dy if backward else x, out, s, zp,
            outer, C, inner, nbc, nbj,
            float(quant_min), float(quant_max), p, seed_bits, offset_bits,
            BACKWARD=backward, QDROP=qdrop is not None, OUT_KIND=cm.out_kind(out.dtype),
            BLOCK_N=bn, BLOCK_C=bc, BLOCK_J=bj, USE_INT64=cm.needs_int64(outer, C, inner, bn, bc, bj),
            **cm.launch_kwargs())
    return out


def _lsq(dy, x, scale, zero_point, quant_min, quant_max, axis, grad_factor, qdrop):
    grad_factor = cm.check_number("grad_factor", grad_factor)
    xc, s, zp, (outer, C, inner) = _prepare(x, scale, zero_point, quant_min, quant_max, axis)
    dy = _check_dy(dy, xc)
    dx = torch.empty(dy.shape, dtype=dy.dtype, device=dy.device)
    dscale_dtype = scale.dtype
    dzp_dtype = zero_point.dtype if zero_point.is_floating_point() else torch.float32
    if x.numel() == 0:
        return (dx, torch.zeros(scale.shape, dtype=dscale_dtype, device=x.device),
                torch.zeros(zero_point.shape, dtype=dzp_dtype, device=x.device))
    p, seed_bits, offset_bits = qdrop if qdrop is not None else (1.0, 0, 0)
    bn, bc, bj = cm.tile_shape(outer, C, inner)
    nbn, nbc, nbj = cm.cdiv(outer, bn), cm.cdiv(C, bc), cm.cdiv(inner, bj)
    split_n, per_n, split_j, per_j = cm.reduction_split(outer, C, inner, bn, bc, bj, x.device)
    num_splits = split_n * split_j
    dscale_part = torch.empty((C, num_splits), dtype=torch.float32, device=x.device)
    dzp_part = torch.empty((C, num_splits), dtype=torch.float32, device=x.device)
    with cm.on_device(x):
        _lsq_backward_kernel[(nbc * num_splits,)](
            dy, xc, dx, s, zp, dscale_part, dzp_part,
            outer, C, inner, nbn, nbj, split_n, per_n, split_j, per_j,
            float(quant_min), float(quant_max), grad_factor, p, seed_bits, offset_bits,
            QDROP=qdrop is not None, OUT_KIND=cm.out_kind(dx.dtype),
            BLOCK_N=bn, BLOCK_C=bc, BLOCK_J=bj, USE_INT64=cm.needs_int64(outer, C, inner, bn, bc, bj),
            **cm.launch_kwargs())
    dscale = dscale_part.sum(1)
    dzp = dzp_part.sum(1)
    if scale.numel() == 1:
        dscale = dscale.sum()
    if zero_point.numel() == 1:
        dzp = dzp.sum()
    return (dx, dscale.to(dscale_dtype).reshape(scale.shape), dzp.to(dzp_dtype).reshape(zero_point.shape))


def fq_forward(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int,
               quant_max: int, axis: Optional[int]) -> torch.Tensor:
    """Fake-quantized x, same shape and dtype (fp32/fp16/bf16).

    ``scale`` fp32 [C] (or one element), ``zero_point`` [C] holding integers; ``axis`` None
    (per-tensor) or the channel dim of x. Bit-identical to the reference ``fq_forward``."""
    return _elementwise(x, None, scale, zero_point, quant_min, quant_max, axis, backward=False, qdrop=None)


def fq_backward(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                quant_min: int, quant_max: int, axis: Optional[int]) -> torch.Tensor:
    """Straight-through gradient: dy (dy's dtype) where qmin <= round(x/s)+zp <= qmax, else 0."""
    return _elementwise(x, dy, scale, zero_point, quant_min, quant_max, axis, backward=True, qdrop=None)


def lsq_backward(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                 quant_min: int, quant_max: int, axis: Optional[int], grad_factor: float
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LSQ/LSQ+ gradients (dx in dy's dtype, dscale like scale, dzero_point like zero_point).

    The zero point is rounded and clamped in the kernel as in the reference (a no-op when the
    caller already did it). Sums are fp32, from a fixed per-shape split (deterministic)."""
    return _lsq(dy, x, scale, zero_point, quant_min, quant_max, axis, grad_factor, qdrop=None)


def qdrop_fq_forward(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int,
                     quant_max: int, axis: Optional[int], p: float, seed: int, offset: int
                     ) -> torch.Tensor:
    """Fake-quantized x where ``uniform(seed, i + offset) < p``, x itself elsewhere."""
    return _elementwise(x, None, scale, zero_point, quant_min, quant_max, axis, backward=False,
                        qdrop=_qdrop_args(p, seed, offset))


def qdrop_fq_backward(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                      quant_min: int, quant_max: int, axis: Optional[int], p: float, seed: int,
                      offset: int) -> torch.Tensor:
    """STE gradient on the quantized elements, dy on the dropped (float) ones."""
    return _elementwise(x, dy, scale, zero_point, quant_min, quant_max, axis, backward=True,
                        qdrop=_qdrop_args(p, seed, offset))


def qdrop_lsq_backward(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                       quant_min: int, quant_max: int, axis: Optional[int], grad_factor: float, p: float,
                       seed: int, offset: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LSQ gradients over the quantized elements only; dx = dy on the dropped ones."""
    return _lsq(dy, x, scale, zero_point, quant_min, quant_max, axis, grad_factor,
                qdrop=_qdrop_args(p, seed, offset))
