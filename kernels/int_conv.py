"""Integer conv2d in NHWC: implicit-GEMM int8 conv (groups == 1) and a depthwise kernel.

Layouts. ``x`` int8 / uint8 [B, H, W, C] (NHWC; any strides, so an NCHW tensor in
channels_last memory can be passed as ``x.permute(0, 2, 3, 1)`` without a copy). The weight
is int8 [O, kh, kw, C / groups] ("OHWI", the NHWC analogue of PyTorch's [O, C/g, kh, kw]: the
GEMM's K = (r, s, c) runs with c fastest, so a weight row is K-contiguous). Output NHWC
[B, OH, OW, O], contiguous, int32 or the epilogue's dtype.

Implicit GEMM (groups == 1): M = B*OH*OW output pixels, N = O, K = kh*kw*C. A program owns a
[BLOCK_M pixels, BLOCK_N channels] tile; the pixel -> (b, oh, ow) decode happens once, then a
single flat loop over (filter tap, channel block) pairs gathers a [BLOCK_M, BLOCK_K] tile of
x (one contiguous channel run per pixel) and a [BLOCK_K, BLOCK_N] weight tile for an int8
``tl.dot``. Out-of-image taps read ``pad_value``: 0 for symmetric activations; for
asymmetric uint8 activations pass the activation zero point, so that padding contributes
exactly zero to ``sum (x - za)(w - zw)`` (what a quantized model's zero-padded float input
means) and the epilogue's zero-point correction stays exact. Channel tails are masked.

Depthwise (groups == C == O): a program owns [BLOCK_M pixels, BLOCK_C channels] and loops over
the kh*kw taps with int32 multiply-adds on CUDA cores (no reduction over channels, so no MMA);
zero points are subtracted inline ((x - za) * (w - zw)), then the shared epilogue runs.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from zsq_engine.opspec.epilogue import Epilogue

from . import _common as cm
from . import epilogue as epi
from .epilogue import epilogue_store
from .int_gemm import _config, _m_bucket, grouped_tile, prune_configs

IntPair = Union[int, Tuple[int, int]]

if cm.INTERPRET:
    CONV_CONFIGS = [_config(16, 16, 32, 1, 4, group=2)]
    CONV_UNALIGNED_CONFIGS = CONV_CONFIGS
    DW_BLOCKS = (16, 16, 4)  # BLOCK_M, BLOCK_C, num_warps
else:  # pragma: no cover - GPU only
    CONV_CONFIGS = [
        _config(128, 128, 64, 3, 8),  # 4 stages spill 8 B on sm_80
        _config(128, 128, 128, 3, 8),
        _config(128, 256, 64, 3, 8, no_residual=True),  # spills with a residual epilogue
        _config(64, 128, 64, 4, 4),
        _config(128, 64, 64, 4, 4),
        _config(64, 64, 32, 4, 4),
    ]
    # Inputs whose pixel rows are not 16-byte aligned (C not a multiple of 16, e.g. 3, 24, 40;
    # NCHW views): channel runs are loaded byte by byte without cp.async, and every tile above
    # spills there (up to 1.7 KB at C = 40 on sm_90a). These two stay in registers.
    CONV_UNALIGNED_CONFIGS = [
        _config(64, 64, 32, 4, 4),
        _config(128, 64, 32, 3, 8),
    ]
    DW_BLOCKS = (64, 64, 4)


@triton.jit
def output_pixel_origin(rm, OH, OW, stride_h, stride_w, pad_h, pad_w):
    """For flattened output pixels ``rm`` (image-major, then row, then column): the input row and
    column of the kernel's top-left tap (may be negative: padding) and the image index."""
    img = rm // (OH * OW)
    pix = rm - img * (OH * OW)
    oh = pix // OW
    ow = pix - oh * OW
    return oh * stride_h - pad_h, ow * stride_w - pad_w, img


@triton.jit
def _conv_k_step(acc, rowsum, it, x_img, ih0, iw0, rm_ok, w_rows, rn_ok, H, W, C, KW, c_blocks,
                 dil_h, dil_w, sxh, sxw, sxc, swh, sww, swc, pad_eff,
                 A_UINT8: tl.constexpr, ROWSUM: tl.constexpr, BLOCK_K: tl.constexpr):
    tap = it // c_blocks
    cb = it - tap * c_blocks
    kr = tap // KW
    ks = tap - kr * KW
    ih = ih0 + kr * dil_h
    iw = iw0 + ks * dil_w
    inside = rm_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    rc = cb * BLOCK_K + tl.arange(0, BLOCK_K)
    cmask = rc < C
    a = tl.load(x_img[:, None] + (ih * sxh + iw * sxw)[:, None] + rc[None, :] * sxc,
                mask=inside[:, None] & cmask[None, :], other=0)
    if A_UINT8:
        a = (a ^ 0x80).to(tl.int8, bitcast=True)
    a = tl.where(inside[:, None], a, pad_eff).to(tl.int8)
    b = tl.load(w_rows[None, :] + (kr * swh + ks * sww) + rc[:, None] * swc,
                mask=rn_ok[None, :] & cmask[:, None], other=0)
    acc += tl.dot(a, b, out_dtype=tl.int32)
    if ROWSUM:
        rowsum += tl.sum(tl.where(cmask[None, :], a, 0).to(tl.int32), axis=1)
    return acc, rowsum


@triton.jit
def _conv_gemm_kernel(
        x_ptr, w_ptr, out_ptr,
        B, H, W, C, OH, OW, O, KH, KW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, pad_eff, M_BUCKET,
        sxb, sxh, sxw, sxc, swo, swh, sww, swc,
        colsum_ptr, a_zp, wzp_ptr, wscale_ptr, ascale_ptr, bias_ptr,
        res_ptr, stride_rm, stride_rn, res_scale_ptr, res_zp, out_scale_ptr, out_zp, qmin, qmax,
        HAS_AZP: tl.constexpr, HAS_WZP: tl.constexpr, WZP_PER_CH: tl.constexpr, HAS_SCALE: tl.constexpr,
        WSCALE_PER_CH: tl.constexpr, ASCALE_PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr,
        RES_KIND: tl.constexpr, ACT: tl.constexpr, OUT_KIND: tl.constexpr,
        A_UINT8: tl.constexpr, USE_WHILE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    M = B * OH * OW
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(O, BLOCK_N), GROUP_M)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm_ok = rm < M
    rn_ok = rn < O
    ih0, iw0, img = output_pixel_origin(rm, OH, OW, stride_h, stride_w, pad_h, pad_w)
    x_img = x_ptr + img.to(tl.int64) * sxb
    w_rows = w_ptr + rn.to(tl.int64) * swo

    c_blocks = tl.cdiv(C, BLOCK_K)
    num_steps = KH * KW * c_blocks
    ROWSUM: tl.constexpr = HAS_WZP
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    rowsum = tl.zeros((BLOCK_M,), dtype=tl.int32)
    if USE_WHILE:
        it = 0
        while it < num_steps:
            acc, rowsum = _conv_k_step(acc, rowsum, it, x_img, ih0, iw0, rm_ok, w_rows, rn_ok, H, W, C, KW,
                                       c_blocks, dil_h, dil_w, sxh, sxw, sxc, swh, sww, swc, pad_eff,
                                       A_UINT8, ROWSUM, BLOCK_K)
            it += 1
    else:
        for it in range(0, num_steps):
            acc, rowsum = _conv_k_step(acc, rowsum, it, x_img, ih0, iw0, rm_ok, w_rows, rn_ok, H, W, C, KW,
                                       c_blocks, dil_h, dil_w, sxh, sxw, sxc, swh, sww, swc, pad_eff,
                                       A_UINT8, ROWSUM, BLOCK_K)
    epilogue_store(acc, rowsum, rm, rn, M, O, KH * KW * C, out_ptr, O, 1,
                   colsum_ptr, a_zp, wzp_ptr, wscale_ptr, ascale_ptr, bias_ptr,
                   res_ptr, stride_rm, stride_rn, res_scale_ptr, res_zp, out_scale_ptr, out_zp, qmin, qmax,
                   HAS_AZP, HAS_WZP, WZP_PER_CH, HAS_SCALE, WSCALE_PER_CH, ASCALE_PER_ROW, HAS_BIAS,
                   RES_KIND, ACT, OUT_KIND)


_CONV_KEY = ["M_BUCKET", "O", "C", "KH", "KW", "A_UINT8", "RES_KIND"]  # RES_KIND: it prunes configs
_conv_gemm = triton.autotune(configs=CONV_CONFIGS, key=_CONV_KEY,
                             prune_configs_by={"early_config_prune": prune_configs})(_conv_gemm_kernel)
_conv_gemm_unaligned = triton.autotune(configs=CONV_UNALIGNED_CONFIGS, key=_CONV_KEY,
                                       prune_configs_by={"early_config_prune": prune_configs})(_conv_gemm_kernel)


@triton.jit
def _depthwise_kernel(
        x_ptr, w_ptr, out_ptr, zp_w_ptr,
        B, H, W, C, OH, OW, KH, KW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, pad_value, a_zp_inline,
        sxb, sxh, sxw, sxc, swo, swh, sww,
        colsum_ptr, a_zp, wzp_ptr, wscale_ptr, ascale_ptr, bias_ptr,
        res_ptr, stride_rm, stride_rn, res_scale_ptr, res_zp, out_scale_ptr, out_zp, qmin, qmax,
        HAS_AZP: tl.constexpr, HAS_WZP: tl.constexpr, WZP_PER_CH: tl.constexpr, HAS_SCALE: tl.constexpr,
        WSCALE_PER_CH: tl.constexpr, ASCALE_PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr,
        RES_KIND: tl.constexpr, ACT: tl.constexpr, OUT_KIND: tl.constexpr,
        INLINE_WZP: tl.constexpr, INLINE_WZP_PER_CH: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    M = B * OH * OW
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rm_ok = rm < M
    c_ok = rc < C
    ih0, iw0, img = output_pixel_origin(rm, OH, OW, stride_h, stride_w, pad_h, pad_w)
    x_img = x_ptr + img.to(tl.int64) * sxb
    w_ch = w_ptr + rc * swo
    if INLINE_WZP:
        if INLINE_WZP_PER_CH:
            zw = tl.load(zp_w_ptr + rc, mask=c_ok, other=0)
        else:
            zw = tl.load(zp_w_ptr + rc * 0)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.int32)
    tap = 0
    while tap < KH * KW:
        kr = tap // KW
        ks = tap - kr * KW
        ih = ih0 + kr * dil_h
        iw = iw0 + ks * dil_w
        inside = rm_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xv = tl.load(x_img[:, None] + (ih * sxh + iw * sxw)[:, None] + rc[None, :] * sxc,
                     mask=inside[:, None] & c_ok[None, :], other=0).to(tl.int32)
        xv = tl.where(inside[:, None], xv, pad_value) - a_zp_inline
        wv = tl.load(w_ch + kr * swh + ks * sww, mask=c_ok, other=0).to(tl.int32)
        if INLINE_WZP:
            wv = wv - zw
        acc += xv * wv[None, :]
        tap += 1
    rowsum = tl.zeros((BLOCK_M,), dtype=tl.int32)
    epilogue_store(acc, rowsum, rm, rc, M, C, KH * KW, out_ptr, C, 1,
                   colsum_ptr, a_zp, wzp_ptr, wscale_ptr, ascale_ptr, bias_ptr,
                   res_ptr, stride_rm, stride_rn, res_scale_ptr, res_zp, out_scale_ptr, out_zp, qmin, qmax,
                   HAS_AZP, HAS_WZP, WZP_PER_CH, HAS_SCALE, WSCALE_PER_CH, ASCALE_PER_ROW, HAS_BIAS,
                   RES_KIND, ACT, OUT_KIND)


# ----------------------------------------------------------------------------- host side

def _pair(name: str, v, minimum: int) -> Tuple[int, int]:
    pair = (v, v) if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) and p >= minimum for p in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return pair  # type: ignore[return-value]


def _residual_2d(epilogue: Optional[Epilogue], out_shape, M: int, O: int) -> Optional[torch.Tensor]:
    if epilogue is None or epilogue.residual is None:
        return None
    r = epilogue.residual
    if tuple(r.shape) != tuple(out_shape):
        raise ValueError(f"epilogue.residual must be NHWC {tuple(out_shape)} like the output, got {tuple(r.shape)}")
    return r.reshape(M, O)


def _per_row_act_scale(epilogue: Optional[Epilogue]) -> None:
    s = None if epilogue is None else epilogue.act_scale
    if isinstance(s, torch.Tensor) and s.numel() > 1:
        raise ValueError("conv epilogues take a per-tensor act_scale (one element), got "
                         f"shape {tuple(s.shape)}")


def int8_conv2d_nhwc(x: torch.Tensor, w: torch.Tensor, stride: IntPair = 1, padding: IntPair = 0,
                     dilation: IntPair = 1, groups: int = 1, epilogue: Optional[Epilogue] = None,
                     pad_value: int = 0) -> torch.Tensor:
    """Integer conv2d, NHWC in and out.

    ``x``: int8 or uint8 [B, H, W, C]; ``w``: int8 [O, kh, kw, C / groups]. ``groups`` must be 1
    (implicit GEMM) or C == O (depthwise). ``pad_value``: the value of out-of-image taps (0, or
    the activation zero point for asymmetric uint8 activations). Returns [B, OH, OW, O]: int32
    ``sum x * w`` (exact) without an epilogue, else the epilogue's dtype (``M`` = B*OH*OW rows)."""
    for name, t, dtypes in (("x", x, (torch.int8, torch.uint8)), ("w", w, (torch.int8,))):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D ({'NHWC [B, H, W, C]' if name == 'x' else '[O, kh, kw, C/groups]'}), "
                             f"got shape {tuple(t.shape)}")
        cm.check_device(name, t)
    if w.device != x.device:
        raise ValueError(f"w is on {w.device} but x is on {x.device}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    lo, hi = (-128, 127) if x.dtype == torch.int8 else (0, 255)
    if isinstance(pad_value, bool) or not isinstance(pad_value, int) or not lo <= pad_value <= hi:
        raise ValueError(f"pad_value must be an int in [{lo}, {hi}] for {x.dtype} x, got {pad_value!r}")
    B, H, W, C = x.shape
    O, KH, KW, CG = w.shape
    if CG * groups != C or O % groups:
        raise ValueError(f"w {tuple(w.shape)} with groups={groups} does not fit x with C={C} (expected "
                         "w.shape[3] * groups == C and O divisible by groups)")
    depthwise = groups > 1
    if depthwise and not (groups == C and O == C):
        raise NotImplementedError(f"grouped conv with groups={groups} is only implemented as depthwise "
                                  f"(groups == C == O); got C={C}, O={O}")
    sh, sw = _pair("stride", stride, 1)
    ph, pw = _pair("padding", padding, 0)
    dh, dw = _pair("dilation", dilation, 1)
    OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    if OH < 1 or OW < 1:
        raise ValueError(f"the output would be empty ({OH}x{OW}) for input {H}x{W}, kernel {KH}x{KW}, "
                         f"padding {(ph, pw)}, dilation {(dh, dw)}")
    _per_row_act_scale(epilogue)
    out = torch.empty((B, OH, OW, O), dtype=epi.out_dtype_of(epilogue), device=x.device)
    M = B * OH * OW
    if M == 0 or O == 0:
        return out
    res2d = _residual_2d(epilogue, out.shape, M, O)
    is_u8 = x.dtype == torch.uint8
    if depthwise:
        return _depthwise(x, w, out, epilogue, res2d, (sh, sw), (ph, pw), (dh, dw), pad_value, M)
    ep_args, flags = epi.prepare(epilogue, M, O, KH * KW * C, out, is_u8,
                                 lambda: w.reshape(O, -1).sum(dim=1, dtype=torch.int32), res2d)
    pad_eff = pad_value - 128 if is_u8 else pad_value
    grid = lambda meta: (cm.cdiv(M, meta["BLOCK_M"]) * cm.cdiv(O, meta["BLOCK_N"]),)  # noqa: E731
    kernel = _conv_gemm if _channels_aligned(x, w) else _conv_gemm_unaligned
    with cm.on_device(x):
        kernel[grid](x, w, out, B, H, W, C, OH, OW, O, KH, KW, sh, sw, ph, pw, dh, dw, pad_eff, _m_bucket(M),
                         *x.stride(), w.stride(0), w.stride(1), w.stride(2), w.stride(3),
                         *ep_args, **flags, A_UINT8=is_u8, USE_WHILE=cm.INTERPRET)
    return out


def _channels_aligned(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether every pixel's channel run of x and every weight tap's starts on a 16-byte
    boundary and holds a multiple of 16 channels (what the large tiles need for cp.async)."""
    return (x.stride(3) == 1 and w.stride(3) == 1 and x.shape[3] % 16 == 0
            and all(s % 16 == 0 for s in x.stride()[:3] + w.stride()[:3])
            and x.data_ptr() % 16 == 0 and w.data_ptr() % 16 == 0)


def _depthwise(x, w, out, epilogue, res2d, stride, padding, dilation, pad_value, M):
    B, H, W, C = x.shape
    _, KH, KW, _ = w.shape
    ep = epilogue
    za = 0 if ep is None else ep.act_zero_point
    inline_wzp = ep is not None and ep.has_weight_zero_point()
    zp_w, zp_w_per_ch = out, False
    if inline_wzp:
        zp_w, zp_w_per_ch = epi._vector("weight_zero_point", ep.weight_zero_point, C, x.device, torch.int32)
    ep_args, flags = epi.prepare(ep, M, C, KH * KW, out, False, None, res2d, zero_points_in_kernel=False)
    bm, bc, warps = DW_BLOCKS
    grid = (cm.cdiv(M, bm), cm.cdiv(C, bc))
    with cm.on_device(x):
        _depthwise_kernel[grid](x, w, out, zp_w, B, H, W, C, *out.shape[1:3], KH, KW, *stride, *padding, *dilation,
                                pad_value, za, *x.stride(), w.stride(0), w.stride(1), w.stride(2),
                                *ep_args, **flags, INLINE_WZP=inline_wzp, INLINE_WZP_PER_CH=zp_w_per_ch,
                                BLOCK_M=bm, BLOCK_C=bc, num_warps=warps)
    return out
