"""AdaRound kernels: soft/hard rounded weights, their gradients, and the rounding regulariser.

Matches ``zsq_engine.ops.adaround.reference`` (BRECQ AdaRound and the Genie-M variant that also
learns the scale): ``h = clamp(sigmoid(alpha) * (zeta - gamma) + gamma, 0, 1)`` (or
``alpha >= 0`` when hard), ``W = (clamp(w_floor + h + zp, qmin, qmax) - zp) * scale``; clamps pass
gradient on their closed intervals. Everything is computed in fp32 registers; the sigmoid /
exp2 / log2 of Triton differ from torch's in the last bits, so results are close, not identical.

Grid / blocking (see ``_common``): the weight is viewed as ``[outer, C, inner]`` (``axis`` = the
output-channel dim, normally 0) and tiled ``[BLOCK_N, BLOCK_C, BLOCK_J]``.

* ``adaround_forward``: one program per tile (1-D grid).
* ``adaround_backward``: one launch; programs = channel blocks x splits of their tiles, each
  writes ``dalpha`` for its tiles and one fp32 ``dscale`` partial per channel into
  ``[C, num_splits]``, summed by torch. A weight row (``inner`` = Cin*kh*kw) is split across a
  few programs when there are few channels.
* regulariser forward: alpha flattened to ``[1, 1, numel]``, split over ~4 programs per SM, each
  looping over its tiles and writing one fp32 partial; backward: elementwise, reading the
  upstream gradient from device memory (no host sync).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from . import _common as cm
from ._common import clamp_nan, pow_nonneg, split_tile_range, sum_nj, tile_offsets, to_out

GAMMA = -0.1
ZETA = 1.1


@triton.jit
def _rectified_sigmoid(a, zeta_minus_gamma, gamma):
    sig = tl.sigmoid(a)
    h_lin = sig * zeta_minus_gamma + gamma
    return sig, h_lin, clamp_nan(h_lin, 0.0, 1.0)


@triton.jit
def _adaround_forward_kernel(
        wf_ptr, alpha_ptr, out_ptr, scale_ptr, zp_ptr,
        outer, C, inner, num_cblocks, num_jblocks,
        quant_min, quant_max, zeta_minus_gamma, gamma,
        HARD: tl.constexpr, OUT_KIND: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, USE_INT64: tl.constexpr):
    pid = tl.program_id(0)
    jb = pid % num_jblocks
    rest = pid // num_jblocks
    cb = rest % num_cblocks
    nb = rest // num_cblocks
    offs, mask, c = tile_offsets(nb, cb, jb, outer, C, inner, BLOCK_N, BLOCK_C, BLOCK_J, USE_INT64)
    cmask = c < C
    s = tl.load(scale_ptr + c, mask=cmask, other=1.0)[None, :, None]
    zp = tl.load(zp_ptr + c, mask=cmask, other=0.0)[None, :, None]
    wf = tl.load(wf_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(alpha_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HARD:
        h = (a >= 0.0).to(tl.float32)
    else:
        _sig, _h_lin, h = _rectified_sigmoid(a, zeta_minus_gamma, gamma)
    w = (clamp_nan(wf + h + zp, quant_min, quant_max) - zp) * s
    tl.store(out_ptr + offs, to_out(w, OUT_KIND), mask=mask)


@triton.jit
def _adaround_backward_kernel(
        dy_ptr, wf_ptr, alpha_ptr, dalpha_ptr, scale_ptr, zp_ptr, dscale_part_ptr,
        outer, C, inner, num_nblocks, num_jblocks, split_n, per_n, split_j, per_j,
        quant_min, quant_max, zeta_minus_gamma, gamma,
        OUT_KIND: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, USE_INT64: tl.constexpr):
    cb, split, nb_start, jb_start, j_count, num_tiles = split_tile_range(
        tl.program_id(0), split_n, per_n, split_j, per_j, num_nblocks, num_jblocks)

    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    s = tl.load(scale_ptr + c, mask=cmask, other=1.0)[None, :, None]
    zp = tl.load(zp_ptr + c, mask=cmask, other=0.0)[None, :, None]
    acc = tl.zeros((BLOCK_N, BLOCK_C, BLOCK_J), dtype=tl.float32)
    t = 0
    while t < num_tiles:
        nb = nb_start + t // j_count
        jb = jb_start + t % j_count
        offs, mask, _c = tile_offsets(nb, cb, jb, outer, C, inner, BLOCK_N, BLOCK_C, BLOCK_J, USE_INT64)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        wf = tl.load(wf_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        a = tl.load(alpha_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        sig, h_lin, h = _rectified_sigmoid(a, zeta_minus_gamma, gamma)
        v = wf + h + zp
        inside = (v >= quant_min) & (v <= quant_max)
        live = inside & (h_lin >= 0.0) & (h_lin <= 1.0)
        dalpha = dy * s * zeta_minus_gamma * sig * (1.0 - sig) * live.to(tl.float32)
        tl.store(dalpha_ptr + offs, to_out(dalpha, OUT_KIND), mask=mask)
        acc += tl.where(mask, dy * (clamp_nan(v, quant_min, quant_max) - zp), 0.0)
        t += 1
    part = c * (split_n * split_j) + split
    tl.store(dscale_part_ptr + part, sum_nj(acc), mask=cmask)


@triton.jit
def _adaround_reg_forward_kernel(
        alpha_ptr, part_ptr, numel, num_jblocks, per_j, beta, zeta_minus_gamma, gamma,
        BLOCK: tl.constexpr, USE_INT64: tl.constexpr):
    pid = tl.program_id(0)
    jb_start = pid * per_j
    num_tiles = tl.minimum(per_j, num_jblocks - jb_start)
    acc = tl.zeros((1, 1, BLOCK), dtype=tl.float32)
    t = 0
    while t < num_tiles:
        offs, mask, _c = tile_offsets(0, 0, jb_start + t, 1, 1, numel, 1, 1, BLOCK, USE_INT64)
        a = tl.load(alpha_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        _sig, _h_lin, h = _rectified_sigmoid(a, zeta_minus_gamma, gamma)
        loss = 1.0 - pow_nonneg(tl.abs(2.0 * h - 1.0), beta)
        acc += tl.where(mask, loss, 0.0)
        t += 1
    tl.store(part_ptr + pid + tl.arange(0, 1), sum_nj(acc))


@triton.jit
def _adaround_reg_backward_kernel(
        grad_ptr, alpha_ptr, dalpha_ptr, numel, beta, beta_minus_one, zeta_minus_gamma, gamma,
        OUT_KIND: tl.constexpr, BLOCK: tl.constexpr, USE_INT64: tl.constexpr):
    pid = tl.program_id(0)
    offs, mask, _c = tile_offsets(0, 0, pid, 1, 1, numel, 1, 1, BLOCK, USE_INT64)
    g = tl.load(grad_ptr)
    a = tl.load(alpha_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    sig, h_lin, h = _rectified_sigmoid(a, zeta_minus_gamma, gamma)
    t = 2.0 * h - 1.0
    # autograd of 1 - |t|^beta: -g * beta * |t|^(beta-1) * sgn(t); pow's gradient is 0 for beta == 0
    g_abs = -g * (beta * pow_nonneg(tl.abs(t), beta_minus_one))
    sgn = tl.where(t > 0.0, 1.0, tl.where(t < 0.0, -1.0, 0.0))
    g_u = tl.where((h_lin >= 0.0) & (h_lin <= 1.0), g_abs * sgn * 2.0, 0.0)
    dalpha = g_u * zeta_minus_gamma * (1.0 - sig) * sig
    tl.store(dalpha_ptr + offs, to_out(dalpha, OUT_KIND), mask=mask)


# ----------------------------------------------------------------------------- launchers

def _prepare(w_floor, alpha, scale, zero_point, quant_min, quant_max, axis):
    cm.check_float("w_floor", w_floor)
    cm.check_float("alpha", alpha)
    cm.check_same("w_floor", w_floor, "alpha", alpha)
    cm.check_quant_range(quant_min, quant_max)
    axis = cm.normalize_axis(axis, w_floor.dim())
    params, dims = cm.channel_params(w_floor, axis, scale=scale, zero_point=zero_point)
    return w_floor.contiguous(), alpha.contiguous(), params["scale"], params["zero_point"], dims


def _sigmoid_args(gamma, zeta):
    gamma = cm.check_number("gamma", gamma)
    zeta = cm.check_number("zeta", zeta)
    return zeta - gamma, gamma


def adaround_forward(w_floor: torch.Tensor, alpha: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                     quant_min: int, quant_max: int, axis: Optional[int] = 0, hard: bool = False,
                     gamma: float = GAMMA, zeta: float = ZETA) -> torch.Tensor:
    """Soft (or hard) AdaRound weights, shape of w_floor, dtype promote(w_floor, alpha).

    ``w_floor`` = floor(W/s0) and ``alpha`` the rounding logits (same shape); ``scale`` /
    ``zero_point`` [C] along ``axis`` (or one element, or axis=None)."""
    wf, a, s, zp, (outer, C, inner) = _prepare(w_floor, alpha, scale, zero_point, quant_min, quant_max, axis)
    out_dtype = torch.promote_types(w_floor.dtype, alpha.dtype)
    out = torch.empty(wf.shape, dtype=out_dtype, device=wf.device)
    if wf.numel() == 0:
        return out
    zg, g = _sigmoid_args(gamma, zeta)
    if w_floor.dtype != torch.float32:
        s = s.to(w_floor.dtype).float()  # the reference multiplies by scale.to(w_floor.dtype)
    bn, bc, bj = cm.tile_shape(outer, C, inner)
    nbn, nbc, nbj = cm.cdiv(outer, bn), cm.cdiv(C, bc), cm.cdiv(inner, bj)
    with cm.on_device(wf):
        _adaround_forward_kernel[(nbn * nbc * nbj,)](
            wf, a, out, s, zp, outer, C, inner, nbc, nbj,
            float(quant_min), float(quant_max), zg, g,
            HARD=bool(hard), OUT_KIND=cm.out_kind(out_dtype),
            BLOCK_N=bn, BLOCK_C=bc, BLOCK_J=bj, USE_INT64=cm.needs_int64(outer, C, inner, bn, bc, bj),
            **cm.launch_kwargs())
    return out


def adaround_backward(dy: torch.Tensor, w_floor: torch.Tensor, alpha: torch.Tensor, scale: torch.Tensor,
                      zero_point: torch.Tensor, quant_min: int, quant_max: int, axis: Optional[int] = 0,
                      gamma: float = GAMMA, zeta: float = ZETA) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dalpha in alpha's dtype, dscale fp32 [C]; shaped like scale for axis=None) of the soft
    AdaRound weights, in one launch plus a torch sum over [C, num_splits] partials."""
    wf, a, s, zp, (outer, C, inner) = _prepare(w_floor, alpha, scale, zero_point, quant_min, quant_max, axis)
    cm.check_float("dy", dy)
    cm.check_same("w_floor", w_floor, "dy", dy)
    dy = dy.contiguous()
    dalpha = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    per_tensor = cm.normalize_axis(axis, w_floor.dim()) is None
    if wf.numel() == 0:
        dscale = torch.zeros(C, dtype=torch.float32, device=wf.device)
        return dalpha, dscale.reshape(scale.shape) if per_tensor else dscale
    zg, g = _sigmoid_args(gamma, zeta)
    bn, bc, bj = cm.tile_shape(outer, C, inner)
    nbn, nbc, nbj = cm.cdiv(outer, bn), cm.cdiv(C, bc), cm.cdiv(inner, bj)
    split_n, per_n, split_j, per_j = cm.reduction_split(outer, C, inner, bn, bc, bj, wf.device)
    part = torch.empty((C, split_n * split_j), dtype=torch.float32, device=wf.device)
    with cm.on_device(wf):
        _adaround_backward_kernel[(nbc * split_n * split_j,)](
            dy, wf, a, dalpha, s, zp, part,
            outer, C, inner, nbn, nbj, split_n, per_n, split_j, per_j,
            float(quant_min), float(quant_max), zg, g,
            OUT_KIND=cm.out_kind(dalpha.dtype),
            BLOCK_N=bn, BLOCK_C=bc, BLOCK_J=bj, USE_INT64=cm.needs_int64(outer, C, inner, bn, bc, bj),
            **cm.launch_kwargs())
    dscale = part.sum(1)
    if per_tensor or scale.numel() == 1:
        return dalpha, dscale.sum().reshape(scale.shape)
    return dalpha, dscale


def _flat_plan(numel: int, device: torch.device):
    _bn, _bc, block = cm.tile_shape(1, 1, numel)
    num_jblocks = cm.cdiv(numel, block)
    _sn, _pn, split, per = cm.reduction_split(1, 1, numel, 1, 1, block, device)
    return block, num_jblocks, split, per


def adaround_reg_forward(alpha: torch.Tensor, beta: float, gamma: float = GAMMA, zeta: float = ZETA
                         ) -> torch.Tensor:
    """sum(1 - |2 h(alpha) - 1| ** beta) as an fp32 0-dim tensor (fp32 partial sums)."""
    cm.check_float("alpha", alpha)
    beta = cm.check_number("beta", beta)
    zg, g = _sigmoid_args(gamma, zeta)
    a = alpha.contiguous()
    numel = a.numel()
    if numel == 0:
        return torch.zeros((), dtype=torch.float32, device=a.device)
    block, num_jblocks, split, per = _flat_plan(numel, a.device)
    part = torch.empty(split, dtype=torch.float32, device=a.device)
    with cm.on_device(a):
        _adaround_reg_forward_kernel[(split,)](
            a, part, numel, num_jblocks, per, beta, zg, g,
            BLOCK=block, USE_INT64=cm.needs_int64(1, 1, numel, 1, 1, block), **cm.launch_kwargs())
    return part.sum()


def adaround_reg_backward(grad_out: torch.Tensor, alpha: torch.Tensor, beta: float, gamma: float = GAMMA,
                          zeta: float = ZETA) -> torch.Tensor:
    """dalpha (alpha's dtype) of ``grad_out * adaround_reg_forward(alpha, beta)``.

    ``grad_out``: one-element fp32 tensor on alpha's device, read by the kernel."""
    cm.check_float("alpha", alpha)
    cm.check_float("grad_out", grad_out, (torch.float32,))
    cm.check_same("alpha", alpha, "grad_out", grad_out, same_shape=False)
    if grad_out.numel() != 1:
        raise ValueError(f"grad_out must have one element, got shape {tuple(grad_out.shape)}")
    beta = cm.check_number("beta", beta)
    zg, g = _sigmoid_args(gamma, zeta)
    a = alpha.contiguous()
    dalpha = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    numel = a.numel()
    if numel == 0:
        return dalpha
    _bn, _bc, block = cm.tile_shape(1, 1, numel)
    # pow has zero gradient for beta == 0: beta * |t|^1 gives it without forming 0 * inf
    with cm.on_device(a):
        _adaround_reg_backward_kernel[(cm.cdiv(numel, block),)](
            grad_out.reshape(1), a, dalpha, numel, beta, beta - 1.0 if beta != 0.0 else 1.0, zg, g,
            OUT_KIND=cm.out_kind(dalpha.dtype), BLOCK=block,
            USE_INT64=cm.needs_int64(1, 1, numel, 1, 1, block), **cm.launch_kwargs())
    return dalpha
