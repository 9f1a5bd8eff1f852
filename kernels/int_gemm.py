"""Integer GEMM kernels: W8A8, W4A8 and W4A4 with int32 accumulation and a fused epilogue.

Layouts. ``a`` is the activation [M, K] (int8 or uint8; for W4A4 packed uint8 [M, ceil(K/2)]).
The weight is in the nn.Linear "weight" layout [N, K] (int8), or packed int4 uint8
[N, ceil(K/2)] (element 2i in the low nibble of byte i, 2i+1 in the high nibble, two's
complement; ``zsq_engine.ops.pack_int4``). Both operands K-contiguous is what Hopper's 8-bit
wgmma wants (it only takes K-major operands for 8-bit types); other strides work (they are
passed to the kernel) but may be slower. Output [M, N], contiguous.

Kernel. One program per [BLOCK_M, BLOCK_N] output tile (grouped ordering over M for L2
reuse), optionally one of SPLIT_K programs along K. Each K step loads an int8 tile of ``a``
and of the weight; packed int4 tiles are loaded as [rows, BLOCK_K/2] bytes and widened to int8
in registers (sign-extending shifts, then join/reshape to interleave the nibbles), because
Hopper has no 4-bit MMA: the gain of int4 is the halved weight traffic, which is what matters
at small M. ``tl.dot(int8, int8) -> int32`` (wgmma s8 on sm_90). uint8 activations go in as
``a ^ 0x80`` (= a - 128) and are corrected in the epilogue. K tails are masked (K need not be
a multiple of anything; the unused nibble of an odd K is multiplied by a zero activation).

Tiles (``triton.autotune``, key: log2 bucket of M, N, K and the operand kinds):
* M > 16: Hopper configs 128x128x128 (4 stages) / 128x256x128 and 256x128x128 (3 stages),
  8 warps, plus 64-row tiles for medium M. 128x256x128 int8 uses (16+32) KB of shared memory
  per stage.
* operands whose rows are not 16-byte aligned (odd K, offset views): two smaller tiles that
  stay in registers without cp.async (the large ones spill there).
* M <= 16 (batch-1 style, weight-bandwidth bound): 16-row tiles, BLOCK_N 32-128,
  BLOCK_K 128-256, and split-K chosen on the host so that ~2 programs per SM stream the
  weight; the int32 partials [SPLIT_K, M, N] (tiny) are summed by a second kernel that applies
  the epilogue. Integer partial sums are exact, so this is deterministic.
* Under the Triton interpreter: one 16x16x32 config (fast tests, multi-tile, multi-K-step).

Loops: the interpreter of triton 3.6 cannot run ``range`` over runtime bounds, so the K loop
is a ``while`` there (USE_WHILE) and a ``range`` (software-pipelined by num_stages) on GPU;
both call the same ``_gemm_k_step``.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from zsq_engine.opspec.epilogue import Epilogue
from zsq_engine.opspec.int4 import unpack_int4

from . import _common as cm
from . import epilogue as epi
from .epilogue import epilogue_store

SMALL_M = 16
# K of one split is a multiple of this (every BLOCK_K divides it, so splits start on a tile).
SPLIT_K_ALIGN = 256
MIN_K_PER_SPLIT = 512
SPLIT_PROGRAMS_PER_SM = 2


_HOPPER_ONLY = []
_NO_RESIDUAL = []           # the residual epilogue's extra live registers make these spill
_HOPPER_ONLY_PACKED_A = []  # widening packed int4 activations makes these spill on sm_80


def _config(bm, bn, bk, stages, warps, group=8, hopper_only=False, no_residual=False, hopper_only_packed_a=False):
    config = triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group},
                           num_stages=stages, num_warps=warps)
    for flag, marked in ((hopper_only, _HOPPER_ONLY), (no_residual, _NO_RESIDUAL),
                         (hopper_only_packed_a, _HOPPER_ONLY_PACKED_A)):
        if flag:
            marked.append(config)
    return config


def _is_in(config, marked) -> bool:
    return any(config is m for m in marked)


def prune_configs(configs, named_args, **kwargs):
    """Autotune pruning: tiles marked ``hopper_only`` are dropped below compute capability 9
    (they spill there: wgmma keeps the accumulator where mma.sync cannot), ``hopper_only_packed_a``
    ones too when the activations are packed int4, ``no_residual`` ones when the epilogue adds a
    residual; ``ZSQ_AUTOTUNE=first`` keeps only the first config (quick runs: no tuning)."""
    args = {**named_args, **kwargs}
    tensor = next((v for v in named_args.values() if isinstance(v, torch.Tensor)), None)
    cap = None if tensor is None else cm.device_capability(tensor.device)
    if cap is not None and cap[0] < 9:
        configs = [c for c in configs if not _is_in(c, _HOPPER_ONLY)]
        if args.get("A_KIND", 0) == 2:
            configs = [c for c in configs if not _is_in(c, _HOPPER_ONLY_PACKED_A)]
    if args.get("RES_KIND", 0) != 0:
        configs = [c for c in configs if not _is_in(c, _NO_RESIDUAL)]
    if os.environ.get("ZSQ_AUTOTUNE", "") == "first":
        configs = configs[:1]
    return configs


# Every GPU config below compiles for sm_90a and sm_80 without register spills and within the
# shared-memory limit, and the K loop of the aligned ones is pipelined with cp.async
# (tests/test_triton_aot.py, figures in docs/gpu.md).
if cm.INTERPRET:
    LARGE_CONFIGS = [_config(16, 16, 32, 1, 4, group=2)]
    UNALIGNED_CONFIGS = LARGE_CONFIGS
    SMALL_M_CONFIGS = [_config(16, 16, 32, 1, 4, group=1)]
    SMALL_M_UNALIGNED_CONFIGS = SMALL_M_CONFIGS
else:  # pragma: no cover - GPU only
    LARGE_CONFIGS = [
        _config(128, 128, 128, 4, 8),
        # sm_80: 32 / 52 B spills; with a residual epilogue 280-400 B spills on sm_90a too
        _config(128, 256, 128, 3, 8, hopper_only=True, no_residual=True),
        _config(256, 128, 128, 3, 8, hopper_only=True, no_residual=True),
        _config(128, 128, 64, 5, 8, hopper_only_packed_a=True),  # sm_80, packed int4 activations: 20 B spills
        _config(64, 128, 128, 4, 4),
        _config(64, 256, 128, 3, 8),
        _config(128, 64, 128, 4, 4),
    ]
    SMALL_M_CONFIGS = [
        _config(16, 32, 256, 4, 4, group=1),
        _config(16, 64, 128, 5, 4, group=1),
        _config(16, 64, 256, 4, 4, group=1),
        _config(16, 128, 128, 4, 8, group=1),  # 4 warps: 12 B spills with packed int4 activations
        _config(16, 128, 256, 3, 8, group=1),
    ]
    # small M with rows not 16-byte aligned: the BLOCK_K = 256 tiles with N >= 64 spill there
    SMALL_M_UNALIGNED_CONFIGS = [SMALL_M_CONFIGS[i] for i in (0, 1, 3)]
    # Operands whose rows are not 16-byte aligned (odd K, offset views, transposed weights) are
    # loaded byte by byte with one 64-bit address each: no cp.async, and the large tiles above
    # spill (128x128x128: 1140 B on sm_90a). These tiles stay in registers.
    UNALIGNED_CONFIGS = [
        _config(128, 128, 32, 3, 8),
        _config(128, 64, 64, 3, 8, hopper_only=True),  # sm_80: 28 B spills
    ]

_KEY = ["M_BUCKET", "N", "K", "A_KIND", "B_PACKED", "SPLIT", "RES_KIND"]  # RES_KIND: it prunes configs


@triton.jit
def grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(row block, column block) of program ``pid`` in grouped order: GROUP_M consecutive
    programs walk down GROUP_M row blocks of one column block, so that weight column block is
    read from L2 instead of DRAM by all of them (the output-tile swizzle of GEMM libraries)."""
    group_size = GROUP_M * num_pid_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group
    return pid_m, pid_n


@triton.jit
def _unpack_rows(x, SIGNED: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """uint8 [ROWS, COLS/2] packed nibbles -> int8 [ROWS, COLS] (low nibble first)."""
    if SIGNED:
        lo = (x << 4).to(tl.int8, bitcast=True) >> 4
        hi = x.to(tl.int8, bitcast=True) >> 4
    else:
        lo = (x & 15).to(tl.int8)
        hi = (x >> 4).to(tl.int8)
    return tl.reshape(tl.join(lo, hi), (ROWS, COLS))


@triton.jit
def _gemm_k_step(acc, rowsum, a_rows, b_rows, rm_ok, rn_ok, k0, K, Kp_a, Kp_b, stride_ak, stride_bk,
                 A_KIND: tl.constexpr, B_PACKED: tl.constexpr, ROWSUM: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One BLOCK_K step: acc += a[:, k0:k0+BK] @ w[:, k0:k0+BK]^T (A_KIND 0 int8, 1 uint8,
    2 packed signed int4, 3 packed unsigned int4)."""
    rk = k0 + tl.arange(0, BLOCK_K)
    kmask = rk < K
    if A_KIND >= 2:
        rkb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        ab = tl.load(a_rows[:, None] + rkb[None, :] * stride_ak, mask=rm_ok[:, None] & (rkb < Kp_a)[None, :], other=0)
        a = _unpack_rows(ab, A_KIND == 2, BLOCK_M, BLOCK_K)
        a = tl.where(kmask[None, :], a, 0)
    else:
        a = tl.load(a_rows[:, None] + rk[None, :] * stride_ak, mask=rm_ok[:, None] & kmask[None, :], other=0)
        if A_KIND == 1:
            a = (a ^ 0x80).to(tl.int8, bitcast=True)
            if ROWSUM:
                a = tl.where(kmask[None, :], a, 0)
    if B_PACKED:
        rkb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        bb = tl.load(b_rows[:, None] + rkb[None, :] * stride_bk, mask=rn_ok[:, None] & (rkb < Kp_b)[None, :], other=0)
        b = tl.trans(_unpack_rows(bb, True, BLOCK_N, BLOCK_K))
    else:
        b = tl.load(b_rows[None, :] + rk[:, None] * stride_bk, mask=rn_ok[None, :] & kmask[:, None], other=0)
    acc += tl.dot(a, b, out_dtype=tl.int32)
    if ROWSUM:
        rowsum += tl.sum(a.to(tl.int32), axis=1)
    return acc, rowsum


@triton.jit
def _int_gemm_kernel(
        a_ptr, b_ptr, out_ptr, part_ptr, rowpart_ptr,
        M, N, K, Kp_a, Kp_b, k_per_split, M_BUCKET,
        stride_am, stride_ak, stride_bn, stride_bk, stride_om, stride_on,
        colsum_ptr, a_zp, wzp_ptr, wscale_ptr, ascale_ptr, bias_ptr,
        res_ptr, stride_rm, stride_rn, res_scale_ptr, res_zp, out_scale_ptr, out_zp, qmin, qmax,
        HAS_AZP: tl.constexpr, HAS_WZP: tl.constexpr, WZP_PER_CH: tl.constexpr, HAS_SCALE: tl.constexpr,
        WSCALE_PER_CH: tl.constexpr, ASCALE_PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr,
        RES_KIND: tl.constexpr, ACT: tl.constexpr, OUT_KIND: tl.constexpr,
        A_KIND: tl.constexpr, B_PACKED: tl.constexpr, SPLIT: tl.constexpr, USE_WHILE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm_ok = rm < M
    rn_ok = rn < N
    a_rows = a_ptr + rm.to(tl.int64) * stride_am
    b_rows = b_ptr + rn.to(tl.int64) * stride_bn

    k_start = pid_k * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    num_steps = tl.cdiv(k_end - k_start, BLOCK_K)
    ROWSUM: tl.constexpr = HAS_WZP
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    rowsum = tl.zeros((BLOCK_M,), dtype=tl.int32)
    if USE_WHILE:
        step = 0
        while step < num_steps:
            acc, rowsum = _gemm_k_step(acc, rowsum, a_rows, b_rows, rm_ok, rn_ok, k_start + step * BLOCK_K, k_end,
                                       Kp_a, Kp_b, stride_ak, stride_bk, A_KIND, B_PACKED, ROWSUM,
                                       BLOCK_M, BLOCK_N, BLOCK_K)
            step += 1
    else:
        for step in range(0, num_steps):
            acc, rowsum = _gemm_k_step(acc, rowsum, a_rows, b_rows, rm_ok, rn_ok, k_start + step * BLOCK_K, k_end,
                                       Kp_a, Kp_b, stride_ak, stride_bk, A_KIND, B_PACKED, ROWSUM,
                                       BLOCK_M, BLOCK_N, BLOCK_K)

    if SPLIT:
        # Raw partials; _split_k_epilogue_kernel sums them and applies the epilogue.
        mask = rm_ok[:, None] & rn_ok[None, :]
        base = pid_k.to(tl.int64) * M * N
        tl.store(part_ptr + base + rm.to(tl.int64)[:, None] * N + rn[None, :], acc, mask=mask)
        if ROWSUM:
            tl.store(rowpart_ptr + pid_k * M + rm, rowsum, mask=rm_ok & (pid_n == 0))
    else:
        epilogue_store(acc, rowsum, rm, rn, M, N, K, out_ptr, stride_om, stride_on,
                       colsum_ptr, a_zp, wzp_ptr, wscale_ptr, ascale_ptr, bias_ptr,
                       res_ptr, stride_rm, stride_rn, res_scale_ptr, res_zp, out_scale_ptr, out_zp, qmin, qmax,
                       HAS_AZP, HAS_WZP, WZP_PER_CH, HAS_SCALE, WSCALE_PER_CH, ASCALE_PER_ROW, HAS_BIAS,
                       RES_KIND, ACT, OUT_KIND)


@triton.jit
def _split_k_epilogue_kernel(
        part_ptr, rowpart_ptr, out_ptr, M, N, K, num_splits, stride_om, stride_on,
        colsum_ptr, a_zp, wzp_ptr, wscale_ptr, ascale_ptr, bias_ptr,
        res_ptr, stride_rm, stride_rn, res_scale_ptr, res_zp, out_scale_ptr, out_zp, qmin, qmax,
        HAS_AZP: tl.constexpr, HAS_WZP: tl.constexpr, WZP_PER_CH: tl.constexpr, HAS_SCALE: tl.constexpr,
        WSCALE_PER_CH: tl.constexpr, ASCALE_PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr,
        RES_KIND: tl.constexpr, ACT: tl.constexpr, OUT_KIND: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    rowsum = tl.zeros((BLOCK_M,), dtype=tl.int32)
    s = 0
    while s < num_splits:
        acc += tl.load(part_ptr + s.to(tl.int64) * M * N + offs, mask=mask, other=0)
        if HAS_WZP:
            rowsum += tl.load(rowpart_ptr + s * M + rm, mask=rm < M, other=0)
        s += 1
    epilogue_store(acc, rowsum, rm, rn, M, N, K, out_ptr, stride_om, stride_on,
                   colsum_ptr, a_zp, wzp_ptr, wscale_ptr, ascale_ptr, bias_ptr,
                   res_ptr, stride_rm, stride_rn, res_scale_ptr, res_zp, out_scale_ptr, out_zp, qmin, qmax,
                   HAS_AZP, HAS_WZP, WZP_PER_CH, HAS_SCALE, WSCALE_PER_CH, ASCALE_PER_ROW, HAS_BIAS,
                   RES_KIND, ACT, OUT_KIND)


def _autotuned(configs):
    return triton.autotune(configs=configs, key=_KEY, prune_configs_by={"early_config_prune": prune_configs})(
        _int_gemm_kernel)


_gemm_large = _autotuned(LARGE_CONFIGS)
_gemm_small_m = _autotuned(SMALL_M_CONFIGS)
_gemm_unaligned = _autotuned(UNALIGNED_CONFIGS)
_gemm_small_m_unaligned = _autotuned(SMALL_M_UNALIGNED_CONFIGS)


# ----------------------------------------------------------------------------- host side

def _m_bucket(m: int) -> int:
    return cm.next_pow2(m).bit_length()


def rows_aligned(t: torch.Tensor, k_extent: int) -> bool:
    """Whether the K-contiguous rows of operand ``t`` (``k_extent`` elements, bytes here) start on
    16-byte boundaries and end on a multiple of 16: what the large tiles need for cp.async."""
    return (t.stride(1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) % 16 == 0 or t.shape[0] == 1)
            and k_extent % 16 == 0)


def choose_split_k(M: int, N: int, K: int, device: torch.device) -> int:
    """Split-K heuristic for M <= SMALL_M: enough programs to keep ~2 per SM streaming the
    weight (N / 64 column blocks alone leave most SMs idle at N = 4096 on 132 SMs), but at
    least MIN_K_PER_SPLIT of K per split so the partial traffic stays negligible."""
    if M > SMALL_M:
        return 1
    tiles = cm.cdiv(M, 16) * cm.cdiv(N, 64)
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count  # cached by torch
    else:
        sms = cm.INTERPRETER_PROGRAMS
    want = cm.cdiv(SPLIT_PROGRAMS_PER_SM * sms, tiles)
    return max(1, min(want, K // MIN_K_PER_SPLIT))


def _check_2d(name: str, t, dtypes) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    cm.check_device(name, t)


def _check_packed(name: str, t: torch.Tensor, rows_name: str, k: int) -> None:
    want = (k + 1) // 2
    if t.shape[1] != want:
        hint = " (it looks unpacked: pack it with zsq_engine.ops.pack_int4)" if t.shape[1] == k and k > 1 else ""
        raise ValueError(f"{name} must be packed int4 of shape [{rows_name}, (K + 1) // 2] = "
                         f"[{t.shape[0]}, {want}] for K={k}, got {tuple(t.shape)}{hint}")


def _gemm(a, b, M, N, K, a_kind, b_packed, epilogue, split_k, b_colsum_fn):
    dev = a.device
    if b.device != dev:
        raise ValueError(f"the weight is on {b.device} but the activation is on {dev}")
    out_dtype = epi.out_dtype_of(epilogue)
    out = torch.empty((M, N), dtype=out_dtype, device=dev)
    if M == 0 or N == 0:
        return out
    ep_args, flags = epi.prepare(epilogue, M, N, K, out, a_kind == 1, b_colsum_fn)
    if K == 0:
        a_kind = 0  # nothing to multiply: zero accumulator (+ corrections), no loads
    split = choose_split_k(M, N, K, dev) if split_k is None else max(1, int(split_k))
    k_per_split = cm.cdiv(cm.cdiv(max(K, 1), split), SPLIT_K_ALIGN) * SPLIT_K_ALIGN
    split = max(1, cm.cdiv(K, k_per_split))
    kp_a = a.shape[1] if a_kind >= 2 else K
    kp_b = b.shape[1] if b_packed else K
    aligned = rows_aligned(a, kp_a) and rows_aligned(b, kp_b) and K % 16 == 0
    if M <= SMALL_M:
        kernel = _gemm_small_m if aligned else _gemm_small_m_unaligned
    else:
        kernel = _gemm_large if aligned else _gemm_unaligned
    if split > 1:
        part = torch.empty((split, M, N), dtype=torch.int32, device=dev)
        rowpart = torch.empty((split, M), dtype=torch.int32, device=dev) if flags["HAS_WZP"] else part
    else:
        part = rowpart = out
    grid = lambda meta: (cm.cdiv(M, meta["BLOCK_M"]) * cm.cdiv(N, meta["BLOCK_N"]), split)  # noqa: E731
    with cm.on_device(a):
        kernel[grid](a, b, out, part, rowpart, M, N, K, kp_a, kp_b, k_per_split, _m_bucket(M),
                     a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
                     *ep_args, **flags, A_KIND=a_kind, B_PACKED=b_packed, SPLIT=split > 1,
                     USE_WHILE=cm.INTERPRET)
        if split > 1:
            bm, bn = (16, 16) if cm.INTERPRET else (16, 128)
            _split_k_epilogue_kernel[(cm.cdiv(M, bm), cm.cdiv(N, bn))](
                part, rowpart, out, M, N, K, split, out.stride(0), out.stride(1), *ep_args, **flags,
                BLOCK_M=bm, BLOCK_N=bn, num_warps=4)
    return out


def _colsum_int8(w: torch.Tensor):
    return lambda: w.sum(dim=1, dtype=torch.int32)


def _colsum_packed(w_packed: torch.Tensor, k: int):
    return lambda: unpack_int4(w_packed, k, True).sum(dim=1, dtype=torch.int32)


def int8_gemm(a: torch.Tensor, w: torch.Tensor, epilogue: Optional[Epilogue] = None,
              split_k: Optional[int] = None) -> torch.Tensor:
    """W8A8: ``a`` int8/uint8 [M, K] times ``w`` int8 [N, K] (weight layout) transposed.

    Returns int32 [M, N] (exact, ``a @ w.T``) when ``epilogue`` is None, else the epilogue's
    output dtype. uint8 ``a`` is an asymmetric activation: give its zero point in the epilogue
    (``act_zero_point``). ``split_k`` overrides the small-M heuristic (tests, tuning)."""
    _check_2d("a", a, (torch.int8, torch.uint8))
    _check_2d("w", w, (torch.int8,))
    if a.shape[1] != w.shape[1]:
        raise ValueError(f"a is [M, K] = {tuple(a.shape)} and w must be [N, K] (weight layout) with the same K, "
                         f"got w {tuple(w.shape)}")
    M, K = a.shape
    return _gemm(a, w, M, w.shape[0], K, 1 if a.dtype == torch.uint8 else 0, False, epilogue, split_k,
                 _colsum_int8(w))


def w4a8_gemm(a: torch.Tensor, w_packed: torch.Tensor, epilogue: Optional[Epilogue] = None,
              split_k: Optional[int] = None) -> torch.Tensor:
    """W4A8: ``a`` int8/uint8 [M, K] times packed signed int4 ``w_packed`` uint8
    [N, ceil(K/2)] (``pack_int4`` of the [N, K] weight). Output as :func:`int8_gemm`."""
    _check_2d("a", a, (torch.int8, torch.uint8))
    _check_2d("w_packed", w_packed, (torch.uint8,))
    M, K = a.shape
    _check_packed("w_packed", w_packed, "N", K)
    return _gemm(a, w_packed, M, w_packed.shape[0], K, 1 if a.dtype == torch.uint8 else 0, True, epilogue,
                 split_k, _colsum_packed(w_packed, K))


def w4a4_gemm(a_packed: torch.Tensor, w_packed: torch.Tensor, k: int, epilogue: Optional[Epilogue] = None,
              a_signed: bool = True, split_k: Optional[int] = None) -> torch.Tensor:
    """W4A4: packed int4 activations ``a_packed`` uint8 [M, ceil(k/2)] (signed int4, or unsigned
    uint4 0..15 with ``a_signed=False``) times packed signed int4 ``w_packed`` uint8 [N, ceil(k/2)].
    ``k`` is the true reduction length (needed because an odd k pads a nibble)."""
    _check_2d("a_packed", a_packed, (torch.uint8,))
    _check_2d("w_packed", w_packed, (torch.uint8,))
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    _check_packed("a_packed", a_packed, "M", k)
    _check_packed("w_packed", w_packed, "N", k)
    return _gemm(a_packed, w_packed, a_packed.shape[0], w_packed.shape[0], k, 2 if a_signed else 3, True,
                 epilogue, split_k, _colsum_packed(w_packed, k))


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The ``int_mm`` primitive: int8 [M, K] @ int8 [K, N] -> int32 [M, N], exact.
    ``b`` is read through its transpose view (strides); [N, K]-contiguous storage (``b`` =
    ``w.t()``) is the fast layout on Hopper."""
    _check_2d("a", a, (torch.int8,))
    _check_2d("b", b, (torch.int8,))
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    return int8_gemm(a, b.t())
