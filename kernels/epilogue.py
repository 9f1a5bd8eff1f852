"""Fused epilogue shared by the integer GEMM, implicit-GEMM conv and depthwise conv kernels.

Host side: :func:`prepare` turns a :class:`zsq_engine.opspec.epilogue.Epilogue` into the runtime
argument tuple and the constexpr flags every integer kernel takes in the same order (unused
pointers point at the output: Triton needs a tensor, nothing reads it). Device side:
:func:`epilogue_store` applies the correction / dequant / bias / residual / activation /
requantisation to an int32 accumulator tile and stores it (semantics and error budget in
``zsq_engine/opspec/epilogue.py``).

uint8 activations are fed to the int8 MMA as ``a - 128`` (an XOR of the sign bit); the
kernels then treat them as int8 activations with zero point ``za - 128``, so an unsigned
input always goes through the zero-point correction (that needs ``colsum(w)``).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

from zsq_engine.opspec.dtypes import ACTIVATION_CODES, FLOAT_OUT_DTYPES, QUANT_OUT_DTYPES
from zsq_engine.opspec.epilogue import Epilogue

from . import _common as cm
from ._common import round_half_even, to_out

# Integer output kinds, after the float ones of _common (OUT_FP32 / OUT_FP16 / OUT_BF16).
OUT_INT32, OUT_REQUANT = 3, 4


def _vector(name: str, v, n: int, device, dtype, allow_scalar: bool = True) -> Tuple[torch.Tensor, bool]:
    """(1-D contiguous tensor, per-element?) for a scale / zero point / bias of length n or 1."""
    if not isinstance(v, torch.Tensor):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"epilogue.{name} must be a number or a tensor, got {type(v).__name__}")
        return torch.full((1,), v, dtype=dtype, device=device), False
    if v.device != device:
        raise ValueError(f"epilogue.{name} is on {v.device} but the operands are on {device}")
    flat = v.reshape(-1)
    if flat.numel() == n and (n != 1 or not allow_scalar):
        return flat.to(dtype).contiguous(), True
    if flat.numel() == 1 and allow_scalar:
        return flat.to(dtype).contiguous(), False
    expected = f"{n} elements" + (" or 1" if allow_scalar else "")
    raise ValueError(f"epilogue.{name} must have {expected}, got shape {tuple(v.shape)}")


def out_dtype_of(epilogue: Optional[Epilogue]) -> torch.dtype:
    return torch.int32 if epilogue is None else epilogue.out_dtype


def prepare(epilogue: Optional[Epilogue], M: int, N: int, K: int, out: torch.Tensor, a_is_uint8: bool,
            col_sum_fn, residual_2d: Optional[torch.Tensor] = None,
            zero_points_in_kernel: bool = True) -> Tuple[tuple, Dict[str, object]]:
    """Runtime args and constexpr flags of :func:`epilogue_store`.

    ``col_sum_fn()`` returns int32 [N] ``colsum(w)`` of the unpacked weight (called only when
    the activation zero point is needed and ``weight_col_sum`` was not given);
    ``residual_2d`` is the residual viewed as [M, N] (the caller reshapes conv residuals);
    ``zero_points_in_kernel=False`` (depthwise) means the kernel subtracted them already.
    """
    ep = epilogue.validate() if epilogue is not None else Epilogue(out_dtype=torch.int32)
    dev = out.device
    za = ep.act_zero_point - (128 if a_is_uint8 else 0)
    dummy = out
    has_azp = zero_points_in_kernel and za != 0
    has_wzp = zero_points_in_kernel and ep.has_weight_zero_point()

    colsum = dummy
    if has_azp:
        if ep.weight_col_sum is not None:
            colsum, _ = _vector("weight_col_sum", ep.weight_col_sum, N, dev, torch.int32, allow_scalar=False)
        else:
            colsum = col_sum_fn().to(torch.int32).contiguous()
    wzp, wzp_per_ch = dummy, False
    if has_wzp:
        wzp, wzp_per_ch = _vector("weight_zero_point", ep.weight_zero_point, N, dev, torch.int32)

    has_scale = not ep.integer_output
    wscale = ascale = bias = res = res_scale = out_scale = dummy
    wscale_per_ch = ascale_per_row = False
    res_kind, res_strides = 0, (0, 0)
    res_zp, out_zp, qmin, qmax = ep.residual_zero_point, ep.out_zero_point, 0, 0
    if has_scale:
        wscale, wscale_per_ch = _vector("weight_scale", ep.weight_scale, N, dev, torch.float32)
        ascale, ascale_per_row = _vector("act_scale", ep.act_scale, M, dev, torch.float32)
        if ep.bias is not None:
            bias, _ = _vector("bias", ep.bias, N, dev, torch.float32, allow_scalar=False)
        if ep.residual is not None:
            r = residual_2d if residual_2d is not None else ep.residual
            if r.device != dev:
                raise ValueError(f"epilogue.residual is on {r.device} but the operands are on {dev}")
            if tuple(r.shape) != (M, N):
                raise ValueError(f"epilogue.residual must have shape {(M, N)}, got {tuple(ep.residual.shape)}")
            res, res_strides = r, (r.stride(0), r.stride(1))
            res_kind = 2 if r.dtype in QUANT_OUT_DTYPES else 1
            if res_kind == 2:
                res_scale, _ = _vector("residual_scale", ep.residual_scale, 1, dev, torch.float32)
        if ep.out_dtype in QUANT_OUT_DTYPES:
            out_scale, _ = _vector("out_scale", ep.out_scale, 1, dev, torch.float32)
            qmin, qmax = ep.quant_range()
    if ep.integer_output:
        out_kind = OUT_INT32
    elif ep.out_dtype in FLOAT_OUT_DTYPES:
        out_kind = cm.out_kind(ep.out_dtype)
    else:
        out_kind = OUT_REQUANT
    args = (colsum, za, wzp, wscale, ascale, bias, res, res_strides[0], res_strides[1], res_scale, res_zp,
            out_scale, out_zp, qmin, qmax)
    flags = dict(HAS_AZP=has_azp, HAS_WZP=has_wzp, WZP_PER_CH=wzp_per_ch, HAS_SCALE=has_scale,
                 WSCALE_PER_CH=wscale_per_ch, ASCALE_PER_ROW=ascale_per_row, HAS_BIAS=ep.bias is not None,
                 RES_KIND=res_kind, ACT=ACTIVATION_CODES[ep.activation], OUT_KIND=out_kind)
    return args, flags


@triton.jit
def epilogue_store(acc, rowsum, rm, rn, M, N, K, out_ptr, stride_om, stride_on,
                   colsum_ptr, a_zp, wzp_ptr, wscale_ptr, ascale_ptr, bias_ptr,
                   res_ptr, stride_rm, stride_rn, res_scale_ptr, res_zp,
                   out_scale_ptr, out_zp, qmin, qmax,
                   HAS_AZP: tl.constexpr, HAS_WZP: tl.constexpr, WZP_PER_CH: tl.constexpr,
                   HAS_SCALE: tl.constexpr, WSCALE_PER_CH: tl.constexpr, ASCALE_PER_ROW: tl.constexpr,
                   HAS_BIAS: tl.constexpr, RES_KIND: tl.constexpr, ACT: tl.constexpr, OUT_KIND: tl.constexpr):
    """Apply the epilogue to int32 ``acc`` [BM, BN] (rows ``rm``, columns ``rn``) and store it.
    ``rowsum`` [BM] int32 is the row sum of the (sign-flipped) activations, used with HAS_WZP."""
    mmask = rm < M
    nmask = rn < N
    # Zero-point correction in wrapping int32: exact whenever the true result fits int32.
    if HAS_AZP:
        colsum = tl.load(colsum_ptr + rn, mask=nmask, other=0)
        acc = acc - a_zp * colsum[None, :]
    if HAS_WZP:
        if WZP_PER_CH:
            zw = tl.load(wzp_ptr + rn, mask=nmask, other=0)
        else:
            zw = tl.load(wzp_ptr + rn * 0)
        acc = acc - zw[None, :] * rowsum[:, None] + (K * a_zp) * zw[None, :]
    if HAS_SCALE:
        if WSCALE_PER_CH:
            sw = tl.load(wscale_ptr + rn, mask=nmask, other=0.0)
        else:
            sw = tl.load(wscale_ptr + rn * 0)
        if ASCALE_PER_ROW:
            sa = tl.load(ascale_ptr + rm, mask=mmask, other=0.0)
        else:
            sa = tl.load(ascale_ptr + rm * 0)
        v = acc.to(tl.float32) * (sa[:, None] * sw[None, :])
        if HAS_BIAS:
            v += tl.load(bias_ptr + rn, mask=nmask, other=0.0)[None, :]
        mask = mmask[:, None] & nmask[None, :]
        if RES_KIND != 0:
            r = tl.load(res_ptr + rm.to(tl.int64)[:, None] * stride_rm + rn[None, :] * stride_rn, mask=mask, other=0)
            if RES_KIND == 1:
                v += r.to(tl.float32)
            else:
                v += (r.to(tl.int32) - res_zp).to(tl.float32) * tl.load(res_scale_ptr)
        if ACT == 1:
            v = tl.maximum(v, 0.0)
        elif ACT == 2:
            v = tl.minimum(tl.maximum(v, 0.0), 6.0)
        if OUT_KIND == 4:
            so = tl.load(out_scale_ptr + rn * 0)
            q = round_half_even(tl.div_rn(v, so[None, :])) + out_zp
            q = tl.minimum(tl.maximum(q, qmin), qmax)
            res_val = q.to(tl.int32)
        else:
            res_val = to_out(v, OUT_KIND)
    else:
        res_val = acc
    mask = mmask[:, None] & nmask[None, :]
    offs = rm.to(tl.int64)[:, None] * stride_om + rn[None, :] * stride_on
    tl.store(out_ptr + offs, res_val.to(out_ptr.dtype.element_ty), mask=mask)
