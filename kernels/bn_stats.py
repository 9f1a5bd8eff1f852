"""Fused, batched BatchNorm-statistics loss: every hooked layer in one launch per direction.

What is computed is defined by :mod:`zsq_engine.ops.bn_stats.reference` (``bn_stats_forward`` /
``bn_stats_backward`` and the ``saved`` layout: fp32 ``[3, G]`` rows ``(mean_g, A_g, B_g)``).

Work decomposition. A *group* is one statistic: a channel (per-batch statistics, over (N, H, W))
or an (image, channel) pair (per-image, over (H, W)). A group's values form a *space* of
``N * S`` (per batch) or ``S`` (per image) elements, ``S = H * W`` (1 for [N, C] inputs), made of
rows of ``S`` contiguous elements strided by ``C * S``. Each space is cut into chunks of
``CHUNK`` elements; one chunk of one group of one layer is a *task*, and the grid is ONE program
per task over all layers. Programs find their layer by a binary search over a small int64
device table (one row per layer: data pointer, dtype code, C, S, N, chunks per group, first
task, first group, offset of its channels in the concatenated running statistics); the data
pointer is cast with ``tl.pointer_type`` to the layer's dtype (a uniform runtime branch per
program, so fp32/fp16/bf16 layers can share one launch).

Why chunks of a flattened space: layer shapes differ wildly (ResNet-50 has S from 12544 down to
49 and C from 64 to 2048), and constexpr tile shapes cannot follow every layer in one launch. A
flat chunk keeps every lane busy whatever S is; an element's row is found by a float reciprocal
multiply with an exact integer fix-up (no per-element integer division). Rows of S contiguous
elements give coalesced loads for every S >= 32.

Numerics. A task accumulates ``x - K`` and ``(x - K)^2`` in fp32 lanes with the shift ``K`` = the
group's first element (close to the mean, so no catastrophic cancellation even for
``1000 + 1e-2 * randn``), and writes one (mean - K, M2) partial; K is common to all chunks of a
group, so the partial means are small numbers whose differences (Chan's merge) are exact to
fp32 precision of the spread, not of the mean (1000 would leave only 6e-5 resolution). The *finish* kernel (one program per
block of groups, all layers) merges a group's chunk partials with Chan's parallel formula,
forms the statistics, the distance to the running statistics, the group's weighted loss and the
backward coefficients ``A_g``, ``B_g`` (see the reference module); a torch ``sum`` over the
[G] loss terms gives the 0-dim loss (deterministic, no atomics, no host sync).

Backward: the same task grid; each program loads its group's ``(mean, A, B)`` and grad_out and
writes ``grad_out * (A + B * (a - mean))`` in the activation's dtype (bf16 rounded to nearest
even by hand: the interpreter's cast truncates).
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
import triton
import triton.language as tl

from . import _common as cm
from ._common import to_out

# Per-layer table columns (int64).
COL_PTR, COL_CODE, COL_C, COL_S, COL_N, COL_CHUNKS, COL_TASK0, COL_GROUP0, COL_CHAN0 = range(9)
NCOL = 9

# Elements per loop step and loop steps per task. Per-batch spaces are long (N * S), so a long
# block with 8 warps; per-image spaces are one image's H * W (49 .. 12544 in ResNet-50), where a
# shorter block wastes fewer lanes. Tests shrink these (monkeypatch) to force many chunks.
BLOCK_BATCH = 1024
BLOCK_IMAGE = 256
CHUNK_STEPS = 8
BLOCK_GROUPS = 128

_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_NORMALIZE = {"channels": 0, "batch": 1, "mean": 2}


# ----------------------------------------------------------------------------- device code

@triton.jit
def _find_layer(meta_ptr, key, num_layers, COL: tl.constexpr, NCOLS: tl.constexpr, NUM_STEPS: tl.constexpr):
    """Largest layer l with table[l, COL] <= key (rows sorted by COL); works on scalars and vectors."""
    lo = key * 0
    hi = lo + num_layers
    for _ in tl.static_range(NUM_STEPS):
        mid = (lo + hi) // 2
        start = tl.load(meta_ptr + mid * NCOLS + COL)
        go = start <= key
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid)
    return lo


@triton.jit
def _task_geometry(meta_ptr, t, num_layers, CHUNK: tl.constexpr, PER_IMAGE: tl.constexpr,
                   NCOLS: tl.constexpr, NUM_STEPS: tl.constexpr):
    """Layer row, group (within the layer), first row offset and in-row start of task t."""
    layer = _find_layer(meta_ptr, t.to(tl.int64), num_layers, 6, NCOLS, NUM_STEPS)
    row = meta_ptr + layer * NCOLS
    C = tl.load(row + 2)
    S = tl.load(row + 3)
    N = tl.load(row + 4)
    chunks = tl.load(row + 5)
    local = t - tl.load(row + 6)
    g = local // chunks
    k = local - g * chunks
    if PER_IMAGE:
        n_img = g // C
        c = g - n_img * C
        e0 = n_img * S + k * CHUNK
        count = tl.minimum(S - k * CHUNK, CHUNK)
    else:
        n_img = g * 0
        c = g
        e0 = k * CHUNK
        count = tl.minimum(N * S - k * CHUNK, CHUNK)
    n0 = e0 // S
    r0 = e0 - n0 * S
    base = n0 * C * S + c * S  # element offset (int64) of the chunk's first row
    group_first = (n_img * C + c) * S  # the group's first element: the shift of all its chunks
    return layer, row, g, k, base, group_first - base, r0, count, S, C * S


@triton.jit
def _lane_offsets(i, r0, S, CS, inv_s, USE_INT64: tl.constexpr):
    """Offsets from the chunk's first row of in-chunk elements i: row dn = (r0 + i) // S by a
    float reciprocal with an exact fix-up (at most one step off for r0 + i < 2^22)."""
    j = r0 + i
    dn = (j.to(tl.float32) * inv_s).to(tl.int32)
    r = j - dn * S
    low = r < 0
    dn = tl.where(low, dn - 1, dn)
    r = tl.where(low, r + S, r)
    high = r >= S
    dn = tl.where(high, dn + 1, dn)
    r = tl.where(high, r - S, r)
    if USE_INT64:
        return dn.to(tl.int64) * CS + r
    return dn * CS + r


@triton.jit
def _chunk_moments(ptr, shift_off, r0, count, S, CS, BLOCK: tl.constexpr, USE_INT64: tl.constexpr):
    """(shift, mean - shift, M2) in fp32 of one chunk; the shift is the group's first element,
    common to all chunks of the group, so that merging partial means loses nothing."""
    inv_s = 1.0 / S.to(tl.float32)
    shift = tl.load(ptr + shift_off).to(tl.float32)
    acc1 = tl.zeros((BLOCK,), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK,), dtype=tl.float32)
    lanes = tl.arange(0, BLOCK)
    i0 = 0
    while i0 < count:
        i = i0 + lanes
        mask = i < count
        offs = _lane_offsets(i, r0, S, CS, inv_s, USE_INT64)
        x = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - shift, 0.0)
        acc1 += d
        acc2 += d * d
        i0 += BLOCK
    cnt = count.to(tl.float32)
    s1 = tl.sum(acc1, axis=0)
    s2 = tl.sum(acc2, axis=0)
    mean_d = s1 / cnt
    m2 = tl.maximum(s2 - s1 * mean_d, 0.0)
    return shift, mean_d, m2


@triton.jit
def _chunk_grad(ptr, out_ptr, r0, count, S, CS, mean, coef_a, coef_b, OUT_KIND: tl.constexpr,
                BLOCK: tl.constexpr, USE_INT64: tl.constexpr):
    inv_s = 1.0 / S.to(tl.float32)
    lanes = tl.arange(0, BLOCK)
    i0 = 0
    while i0 < count:
        i = i0 + lanes
        mask = i < count
        offs = _lane_offsets(i, r0, S, CS, inv_s, USE_INT64)
        x = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, to_out(coef_a + coef_b * (x - mean), OUT_KIND), mask=mask)
        i0 += BLOCK


@triton.jit
def _bn_moments_kernel(meta_ptr, part_mean_ptr, part_m2_ptr, shift_ptr, num_layers,
                       CHUNK: tl.constexpr, BLOCK: tl.constexpr, PER_IMAGE: tl.constexpr,
                       NCOLS: tl.constexpr, NUM_STEPS: tl.constexpr, USE_INT64: tl.constexpr):
    t = tl.program_id(0)
    layer, row, g, k, base, shift_off, r0, count, S, CS = _task_geometry(
        meta_ptr, t, num_layers, CHUNK, PER_IMAGE, NCOLS, NUM_STEPS)
    r0 = r0.to(tl.int32)
    S = S.to(tl.int32)
    if not USE_INT64:
        CS = CS.to(tl.int32)
    addr = tl.load(row + 0)
    code = tl.load(row + 1)
    if code == 0:
        shift, mean_d, m2 = _chunk_moments(addr.to(tl.pointer_type(tl.float32)) + base, shift_off, r0, count, S, CS,
                                           BLOCK, USE_INT64)
    elif code == 1:
        shift, mean_d, m2 = _chunk_moments(addr.to(tl.pointer_type(tl.float16)) + base, shift_off, r0, count, S, CS,
                                           BLOCK, USE_INT64)
    else:
        shift, mean_d, m2 = _chunk_moments(addr.to(tl.pointer_type(tl.bfloat16)) + base, shift_off, r0, count, S,
                                           CS, BLOCK, USE_INT64)
    tl.store(part_mean_ptr + t, mean_d)
    tl.store(part_m2_ptr + t, m2)
    if k == 0:
        tl.store(shift_ptr + tl.load(row + 7) + g, shift)


@triton.jit
def _bn_finish_kernel(meta_ptr, part_mean_ptr, part_m2_ptr, shift_ptr, rmean_ptr, rvar_ptr, loss_ptr, saved_ptr,
                      total_groups, max_chunks, num_layers, layer_scale, std_eps, eps_in, corr,
                      CHUNK: tl.constexpr, PER_IMAGE: tl.constexpr, USE_STD: tl.constexpr,
                      NORMALIZE: tl.constexpr, NCOLS: tl.constexpr, NUM_STEPS: tl.constexpr,
                      BLOCK_G: tl.constexpr):
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    gmask = g < total_groups
    gk = tl.where(gmask, g, total_groups - 1).to(tl.int64)
    layer = _find_layer(meta_ptr, gk, num_layers, 7, NCOLS, NUM_STEPS)
    row = meta_ptr + layer * NCOLS
    C = tl.load(row + 2)
    S = tl.load(row + 3)
    N = tl.load(row + 4)
    chunks = tl.load(row + 5)
    task0 = tl.load(row + 6)
    gl = gk - tl.load(row + 7)
    chan0 = tl.load(row + 8)
    if PER_IMAGE:
        c = gl % C
        space = S
    else:
        c = gl
        space = N * S
    first = task0 + gl * chunks
    # Chan's parallel combination of the chunk partials, chunk by chunk.
    n_a = tl.minimum(space, CHUNK).to(tl.float32)
    mean = tl.load(part_mean_ptr + first)
    m2 = tl.load(part_m2_ptr + first)
    k = 1
    while k < max_chunks:
        kmask = k < chunks
        n_b = tl.where(kmask, tl.minimum(space - k * CHUNK, CHUNK), 0).to(tl.float32)
        mean_b = tl.load(part_mean_ptr + first + k, mask=kmask, other=0.0)
        m2_b = tl.load(part_m2_ptr + first + k, mask=kmask, other=0.0)
        n_ab = n_a + n_b
        delta = mean_b - mean
        frac = n_b / n_ab
        mean = mean + delta * frac
        m2 = m2 + m2_b + delta * delta * n_a * frac
        n_a = n_ab
        k += 1
    mean = mean + tl.load(shift_ptr + gk)
    count = space.to(tl.float32)
    dof = count - corr
    var = m2 / dof
    rm = tl.load(rmean_ptr + chan0 + c)
    rv = tl.load(rvar_ptr + chan0 + c)
    if USE_STD:
        spread = tl.sqrt(var + eps_in)
        target = tl.sqrt(rv + std_eps)
    else:
        spread = var
        target = rv
    if NORMALIZE == 0:
        w = 1.0 / C.to(tl.float32)
    elif NORMALIZE == 1:
        if PER_IMAGE:
            w = 1.0 / N.to(tl.float32)
        else:
            w = tl.full((BLOCK_G,), 1.0, tl.float32)
    else:
        if PER_IMAGE:
            w = 1.0 / (N * C).to(tl.float32)
        else:
            w = 1.0 / C.to(tl.float32)
    w = w * layer_scale
    dm = mean - rm
    ds = spread - target
    tl.store(loss_ptr + g, w * (dm * dm + ds * ds), mask=gmask)
    coef_a = w * 2.0 * dm / count
    if USE_STD:
        coef_b = w * 2.0 * ds / (spread * dof)
    else:
        coef_b = w * 4.0 * ds / dof
    tl.store(saved_ptr + g, mean, mask=gmask)
    tl.store(saved_ptr + total_groups + g, coef_a, mask=gmask)
    tl.store(saved_ptr + 2 * total_groups + g, coef_b, mask=gmask)


@triton.jit
def _bn_grad_kernel(meta_ptr, grads_ptr, saved_ptr, grad_out_ptr, total_groups, num_layers,
                    CHUNK: tl.constexpr, BLOCK: tl.constexpr, PER_IMAGE: tl.constexpr,
                    NCOLS: tl.constexpr, NUM_STEPS: tl.constexpr, USE_INT64: tl.constexpr):
    t = tl.program_id(0)
    layer, row, g, k, base, shift_off, r0, count, S, CS = _task_geometry(
        meta_ptr, t, num_layers, CHUNK, PER_IMAGE, NCOLS, NUM_STEPS)
    r0 = r0.to(tl.int32)
    S = S.to(tl.int32)
    if not USE_INT64:
        CS = CS.to(tl.int32)
    gg = g + tl.load(row + 7)
    go = tl.load(grad_out_ptr).to(tl.float32)
    mean = tl.load(saved_ptr + gg)
    coef_a = go * tl.load(saved_ptr + total_groups + gg)
    coef_b = go * tl.load(saved_ptr + 2 * total_groups + gg)
    addr = tl.load(row + 0)
    out_addr = tl.load(grads_ptr + layer)
    code = tl.load(row + 1)
    if code == 0:
        _chunk_grad(addr.to(tl.pointer_type(tl.float32)) + base, out_addr.to(tl.pointer_type(tl.float32)) + base,
                    r0, count, S, CS, mean, coef_a, coef_b, 0, BLOCK, USE_INT64)
    elif code == 1:
        _chunk_grad(addr.to(tl.pointer_type(tl.float16)) + base, out_addr.to(tl.pointer_type(tl.float16)) + base,
                    r0, count, S, CS, mean, coef_a, coef_b, 1, BLOCK, USE_INT64)
    else:
        _chunk_grad(addr.to(tl.pointer_type(tl.bfloat16)) + base, out_addr.to(tl.pointer_type(tl.bfloat16)) + base,
                    r0, count, S, CS, mean, coef_a, coef_b, 2, BLOCK, USE_INT64)


# ----------------------------------------------------------------------------- launchers

class _Plan:
    """Host-side description of one launch: the per-layer table and the grid sizes."""

    def __init__(self, acts: Sequence[torch.Tensor], spec):
        self.per_image = bool(spec.per_image)
        self.block = BLOCK_IMAGE if self.per_image else BLOCK_BATCH
        self.chunk = self.block * CHUNK_STEPS
        rows: List[List[int]] = []
        task = group = chan = 0
        max_chunks = 1
        use_int64 = False
        for a in acts:
            n, c = int(a.shape[0]), int(a.shape[1])
            s = int(a.shape[2]) * int(a.shape[3]) if a.dim() == 4 else 1
            space = s if self.per_image else n * s
            chunks = max(1, cm.cdiv(space, self.chunk))
            groups = n * c if self.per_image else c
            rows.append([a.data_ptr(), _DTYPE_CODE[a.dtype], c, s, n, chunks, task, group, chan])
            max_chunks = max(max_chunks, chunks)
            # lane offsets dn * C * S + r with dn <= CHUNK / S + 1
            use_int64 |= (self.chunk // s + 2) * c * s >= 2 ** 31
            task += groups * chunks
            group += groups
            chan += c
        self.rows = rows
        self.num_tasks, self.num_groups, self.max_chunks = task, group, max_chunks
        self.use_int64 = use_int64
        self.num_layers = len(rows)
        self.num_steps = max(1, math.ceil(math.log2(self.num_layers))) + 1
        if self.num_tasks >= 2 ** 31:
            raise ValueError(f"bn_stat_loss: {self.num_tasks} tasks exceed the int32 grid; use fewer/smaller layers")

    def table(self, device: torch.device) -> torch.Tensor:
        host = torch.tensor(self.rows, dtype=torch.int64)
        if device.type == "cuda":
            return host.pin_memory().to(device, non_blocking=True)
        return host

    def kwargs(self) -> dict:
        return dict(CHUNK=self.chunk, PER_IMAGE=self.per_image, NCOLS=NCOL, NUM_STEPS=self.num_steps)


def _num_warps(block: int) -> int:
    return max(1, min(8, block // 128))


def _check_activations(activations) -> List[torch.Tensor]:
    if not isinstance(activations, (list, tuple)) or not activations:
        raise ValueError("activations must be a non-empty list of tensors")
    out = []
    for i, a in enumerate(activations):
        cm.check_float(f"activations[{i}]", a)
        cm.check_same("activations[0]", activations[0], f"activations[{i}]", a, same_shape=False)
        if a.dim() not in (2, 4):
            raise ValueError(f"activations[{i}] must be [N, C, H, W] or [N, C], got shape {tuple(a.shape)}")
        if a.numel() == 0:
            raise ValueError(f"activations[{i}] is empty (shape {tuple(a.shape)})")
        out.append(a.contiguous())
    return out


def bn_stats_forward(activations, running_means, running_vars, spec):
    """Loss (fp32 0-dim) and ``saved`` (fp32 [3, G]) for all layers: 1 moments launch over every
    chunk of every layer, 1 finish launch over every group, 1 sum."""
    acts = _check_activations(activations)
    device = acts[0].device
    plan = _Plan(acts, spec)
    rmean = torch.cat([m.reshape(-1) for m in running_means]).to(device=device, dtype=torch.float32)
    rvar = torch.cat([v.reshape(-1) for v in running_vars]).to(device=device, dtype=torch.float32)
    table = plan.table(device)
    part_mean = torch.empty(plan.num_tasks, dtype=torch.float32, device=device)
    part_m2 = torch.empty(plan.num_tasks, dtype=torch.float32, device=device)
    shifts = torch.empty(plan.num_groups, dtype=torch.float32, device=device)
    loss_terms = torch.empty(plan.num_groups, dtype=torch.float32, device=device)
    saved = torch.empty((3, plan.num_groups), dtype=torch.float32, device=device)
    layer_scale = 1.0 if spec.layer_reduction == "sum" else 1.0 / len(acts)
    with cm.on_device(acts[0]):
        _bn_moments_kernel[(plan.num_tasks,)](
            table, part_mean, part_m2, shifts, plan.num_layers, BLOCK=plan.block, USE_INT64=plan.use_int64,
            num_warps=_num_warps(plan.block), **plan.kwargs())
        _bn_finish_kernel[(cm.cdiv(plan.num_groups, BLOCK_GROUPS),)](
            table, part_mean, part_m2, shifts, rmean, rvar, loss_terms, saved,
            plan.num_groups, plan.max_chunks, plan.num_layers, layer_scale, float(spec.std_eps),
            float(spec.std_eps) if spec.eps_in_std else 0.0, 1.0 if spec.unbiased else 0.0,
            USE_STD=bool(spec.use_std), NORMALIZE=_NORMALIZE[spec.normalize], BLOCK_G=BLOCK_GROUPS,
            num_warps=4, **plan.kwargs())
    return loss_terms.sum(), saved


def bn_stats_backward(grad_out, activations, saved, spec):
    """``grad_out * (A_g + B_g * (a - mean_g))`` for every element of every layer, one launch."""
    acts = _check_activations(activations)
    device = acts[0].device
    plan = _Plan(acts, spec)
    if saved.shape != (3, plan.num_groups) or saved.dtype != torch.float32:
        raise ValueError(f"saved must be fp32 [3, {plan.num_groups}], got {saved.dtype} {tuple(saved.shape)}")
    grads = [torch.empty_like(a) for a in acts]
    table = plan.table(device)
    grad_ptrs = torch.tensor([g.data_ptr() for g in grads], dtype=torch.int64)
    if device.type == "cuda":
        grad_ptrs = grad_ptrs.pin_memory().to(device, non_blocking=True)
    go = grad_out.reshape(1).to(device=device, dtype=torch.float32)
    with cm.on_device(acts[0]):
        _bn_grad_kernel[(plan.num_tasks,)](
            table, grad_ptrs, saved.contiguous(), go, plan.num_groups, plan.num_layers,
            BLOCK=plan.block, USE_INT64=plan.use_int64, num_warps=_num_warps(plan.block), **plan.kwargs())
    return grads
