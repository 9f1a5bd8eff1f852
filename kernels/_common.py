"""Pieces shared by the fake-quant, AdaRound and scale-search Triton kernels.

Layout. Every per-channel op views its input as ``[outer, C, inner]`` (``C = x.shape[axis]``,
``outer`` = product of the dims before ``axis``, ``inner`` = product after; per-tensor is
``[1, 1, numel]``) and works on 3-D register tiles ``[BLOCK_N, BLOCK_C, BLOCK_J]`` of that view.
The tile shape follows the data: a large ``inner`` (weights along axis 0, NCHW activations along
axis 1) gets a long contiguous ``BLOCK_J`` and one or a few channels per tile; a small ``inner``
(``axis`` = last dim, ``inner == 1``) turns the tile into ``[outer, C]`` rows with channels
along the contiguous dimension. Either way a program reads contiguous runs of memory, loads its
channels' parameters once as a ``[BLOCK_C]`` vector and never divides an element index by a
runtime size (only its program id).

Reductions (LSQ / AdaRound scale gradients, the rounding regulariser) use the same tiles: a
program owns one channel block and a rectangle of (n-block, j-block) tiles, accumulates fp32 in
registers and writes one partial per channel into ``partials[C, num_splits]``; a torch ``.sum``
over that small buffer finishes. The split is fixed by the shape and the device, so results are
deterministic (no atomics).

Numerics helpers. ``round_half_even`` is the magic-number trick on ``|v|`` (exact for every
fp32; needs no libdevice, so it runs in the interpreter too). The dequantised value is the fp32
product ``(q - zp) * scale`` rounded to nearest-even in the output dtype. That is exactly what
the reference produces: it forms the product in fp64 (exact), but torch converts fp64 to
fp16/bf16 through fp32, so its result is the fp32 product rounded again (PyTorch's native
fake-quant does the same). bf16 rounding is done on the bits, because the interpreter's
fp32 -> bf16 cast truncates.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

# One copy of the argument checks, shared with the op layer; re-exported for the launchers.
from zsq_engine.opspec.checks import (check_int, check_number, check_quant_range, check_same,  # noqa: F401
                                      check_tensor, normalize_axis)
from zsq_engine.opspec.dtypes import FLOAT_DTYPES

# The interpreter is chosen when a kernel is decorated, i.e. when this package is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Elements per register tile. 2048 with 8 warps is 8 elements per thread (16-byte vector
# loads when the tile's contiguous dim allows): enough bytes in flight for HBM, and the LSQ
# reduction (two fp32 accumulators, QDrop hash) compiles to <= 64 registers on sm_90 for long
# rows (ptxas -v). Tiles whose contiguous dim is short (axis = last dim) are not vectorised
# and take ~100 registers at 8 warps (~200 at 4 warps). Tests shrink TILE (monkeypatch) to
# force the multi-tile / multi-split paths on small inputs.
TILE = 2048
NUM_WARPS = 8
# Reductions: aim for a few waves of programs on the GPU, but give each program at least
# MIN_TILES tiles so the partial buffer stays tiny. Under the interpreter fewer programs is faster.
PROGRAMS_PER_SM = 4
MIN_TILES = 1 if INTERPRET else 4
INTERPRETER_PROGRAMS = 4

# Float output kinds of the elementwise kernels (constexpr OUT_KIND), in FLOAT_DTYPES order.
OUT_FP32, OUT_FP16, OUT_BF16 = 0, 1, 2
_OUT_KIND = dict(zip(FLOAT_DTYPES, (OUT_FP32, OUT_FP16, OUT_BF16)))


# ----------------------------------------------------------------------------- host helpers

def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def out_kind(dtype: torch.dtype) -> int:
    return _OUT_KIND[dtype]


def check_device(name: str, t: torch.Tensor) -> None:
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and INTERPRET:
        return
    raise ValueError(f"{name} is on {t.device}: the Triton kernels need CUDA tensors "
                     f"(CPU tensors only with TRITON_INTERPRET=1 set before import)")


def check_float(name: str, t, dtypes=FLOAT_DTYPES) -> None:
    """A tensor of one of ``dtypes`` on a device the Triton kernels can run on."""
    check_tensor(name, t, dtypes)
    check_device(name, t)


def channel_dims(shape, axis: Optional[int]) -> Tuple[int, int, int]:
    """(outer, C, inner) of the ``[outer, C, inner]`` view of a contiguous tensor."""
    numel = 1
    for s in shape:
        numel *= int(s)
    if axis is None:
        return 1, 1, numel
    outer = 1
    for s in shape[:axis]:
        outer *= int(s)
    inner = 1
    for s in shape[axis + 1:]:
        inner *= int(s)
    return outer, int(shape[axis]), inner


def channel_params(x: torch.Tensor, axis: Optional[int], **params: torch.Tensor):
    """Flat fp32 parameter vectors and the (outer, C, inner) view they apply to.

    ``axis=None`` needs one-element parameters; per-channel needs ``x.shape[axis]`` elements
    each, or one element each (then the op is per-tensor and is run as such).
    """
    flat = {}
    for name, p in params.items():
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(p).__name__}")
        check_same("x", x, name, p, same_shape=False)
        flat[name] = p.reshape(-1).to(torch.float32).contiguous()
    sizes = {p.numel() for p in flat.values()}
    if axis is None or sizes == {1}:
        for name, p in flat.items():
            if p.numel() != 1:
                raise ValueError(f"{name} must have exactly one element for per-tensor quantization "
                                 f"(axis=None), got {p.numel()}")
        return flat, channel_dims(x.shape, None)
    channels = x.shape[axis]
    for name, p in flat.items():
        if p.numel() != channels:
            raise ValueError(f"{name} must have {channels} elements (x.shape[axis={axis}]) for per-channel "
                             f"quantization, got {p.numel()}")
    return flat, channel_dims(x.shape, axis)


def _inner_block(inner: int, rows: int, tile: int) -> int:
    """Power-of-two length of the contiguous tile dimension.

    ``rows`` is how many (n, c) rows the tile could hold at most (next_pow2(outer) *
    next_pow2(C)): when few rows exist the block must be long to fill the tile (per-tensor ->
    ``tile``). Otherwise, among blocks of at least 16 elements, the largest whose padded row
    length is within ~6% of the least padded one (e.g. 576 -> 64, 3136 -> 256).
    """
    if inner <= 16:
        return min(next_pow2(inner), tile)
    shortest = min(tile, max(16, tile // max(rows, 1)))
    candidates = []
    b = 16
    while b <= tile:
        if b >= shortest:
            candidates.append(b)
        b *= 2
    if not candidates:
        return tile
    padded = {b: cdiv(inner, b) * b for b in candidates}
    best = min(padded.values())
    return max(b for b in candidates if padded[b] * 16 <= best * 17)


def tile_shape(outer: int, channels: int, inner: int) -> Tuple[int, int, int]:
    """(BLOCK_N, BLOCK_C, BLOCK_J) of at most TILE elements for the ``[outer, C, inner]`` view."""
    tile = TILE
    bj = _inner_block(inner, next_pow2(outer) * next_pow2(channels), tile)
    bc = max(1, min(next_pow2(channels), tile // bj))
    bn = max(1, min(next_pow2(outer), tile // (bj * bc)))
    return bn, bc, bj


def needs_int64(outer: int, channels: int, inner: int, bn: int, bc: int, bj: int) -> bool:
    """Whether a (padded) element offset can reach 2^31."""
    return (cdiv(outer, bn) * bn) * (cdiv(channels, bc) * bc) * (cdiv(inner, bj) * bj) >= 2 ** 31 - 1


def device_capability(device: torch.device):
    """(major, minor) of a CUDA device (cached by torch), None for other devices."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)
    return None


def target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        # Cached by torch after the first call; no synchronisation.
        return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_PROGRAMS


def reduction_split(outer: int, channels: int, inner: int, bn: int, bc: int, bj: int,
                    device: torch.device) -> Tuple[int, int, int, int]:
    """(split_n, per_n, split_j, per_j): how the (n-block, j-block) tiles of one channel block
    are shared among programs. Splits go over ``outer`` first (independent images), then over
    ``inner`` (per-tensor and weight rows), so that channel blocks x splits ~ target programs."""
    nbn, nbc, nbj = cdiv(outer, bn), cdiv(channels, bc), cdiv(inner, bj)
    want = max(1, cdiv(target_programs(device), nbc))
    want = min(want, max(1, (nbn * nbj) // MIN_TILES))
    split_n = min(nbn, want)
    per_n = cdiv(nbn, split_n)
    split_n = cdiv(nbn, per_n)
    split_j = min(nbj, cdiv(want, split_n))
    per_j = cdiv(nbj, split_j)
    split_j = cdiv(nbj, per_j)
    return split_n, per_n, split_j, per_j


def as_i32_bits(v: int) -> int:
    """A python int reduced mod 2^32 and written as the signed int32 with the same bits, so the
    kernel argument always has type i32 (no recompilation for values above 2^31)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def launch_kwargs() -> dict:
    return {"num_warps": NUM_WARPS}


def on_device(t: torch.Tensor):
    """Launch context: Triton launches on the current CUDA device, so make it t's."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


# ----------------------------------------------------------------------------- device helpers

@triton.jit
def split_tile_range(pid, split_n, per_n, split_j, per_j, num_nblocks, num_jblocks):
    """The rectangle of (n-block, j-block) tiles one program of a split reduction owns (see
    :func:`reduction_split`): ``pid`` = ((channel block * split_n) + n split) * split_j + j split.
    Returns (channel block, split index ``sn * split_j + sj`` within the channel block, first
    n-block, first j-block, j-blocks per row, number of tiles);
    tile ``t`` is (first n + t // j-blocks, first j + t % j-blocks). Walked with a while loop by
    the callers: dynamic trip counts, which the interpreter cannot run as range()."""
    sj = pid % split_j
    rest = pid // split_j
    sn = rest % split_n
    cb = rest // split_n
    nb_start = sn * per_n
    jb_start = sj * per_j
    n_count = tl.minimum(per_n, num_nblocks - nb_start)
    j_count = tl.minimum(per_j, num_jblocks - jb_start)
    return cb, sn * split_j + sj, nb_start, jb_start, j_count, n_count * j_count


@triton.jit
def round_half_even(v):
    """torch.round for fp32: |v| < 2^23 is rounded by adding and removing 2^23 (the add rounds
    half-to-even at unit precision); larger magnitudes, inf and NaN are already integral/passed."""
    a = tl.abs(v)
    r = tl.where(a < 8388608.0, (a + 8388608.0) - 8388608.0, a)
    return tl.where(v < 0.0, -r, r)


@triton.jit
def clamp_nan(v, lo, hi):
    """torch.clamp semantics: NaN stays NaN (comparisons with NaN are false)."""
    v = tl.where(v < lo, lo, v)
    return tl.where(v > hi, hi, v)


@triton.jit
def f32_to_bf16_rne(v):
    """fp32 -> bf16, round to nearest even on the bits (NaN -> canonical quiet NaN)."""
    b = v.to(tl.uint32, bitcast=True)
    r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    r = tl.where(v != v, 0x7FC0, r)
    return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def to_out(v, OUT_KIND: tl.constexpr):
    """fp32 -> output dtype, rounding to nearest even."""
    if OUT_KIND == 0:
        return v
    elif OUT_KIND == 1:
        return v.to(tl.float16)
    else:
        return f32_to_bf16_rne(v)


@triton.jit
def dequant_to_out(a, s, OUT_KIND: tl.constexpr):
    """``a * s`` (fp32) rounded to the output dtype: the reference's result (see module doc)."""
    return to_out(a * s, OUT_KIND)


@triton.jit
def tile_offsets(nb, cb, jb, outer, C, inner,
                 BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr,
                 USE_INT64: tl.constexpr):
    """Element offsets [BN, BC, BJ] of tile (nb, cb, jb) of the [outer, C, inner] view, its
    bounds mask, and the tile's channel indices [BC]."""
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    j = jb * BLOCK_J + tl.arange(0, BLOCK_J)
    if USE_INT64:
        n = n.to(tl.int64)
    offs = (n[:, None, None] * C + c[None, :, None]) * inner + j[None, None, :]
    mask = (n < outer)[:, None, None] & (c < C)[None, :, None] & (j < inner)[None, None, :]
    return offs, mask, c


@triton.jit
def sum_nj(v):
    """[BN, BC, BJ] -> [BC]."""
    return tl.sum(tl.sum(v, axis=2), axis=0)


@triton.jit
def pow_nonneg(t, e):
    """t ** e for t >= 0 (fp32) as exp2(e * log2(t)), with torch.pow's values at t == 0."""
    r = tl.exp2(e * tl.log2(tl.where(t == 0.0, 1.0, t)))
    at_zero = tl.where(e > 0.0, 0.0, tl.where(e == 0.0, 1.0, float("inf")))
    return tl.where(t == 0.0, at_zero, r)
