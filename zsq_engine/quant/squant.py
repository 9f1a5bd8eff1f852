"""SQuant (Guo et al., ICLR 2022): data-free weight rounding, no data and no gradients. The
algorithm as implemented here: docs/quant.md.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .quantizer import UniformQuantizer

__all__ = ["squant_round", "squant_codes", "apply_squant"]


def _flip(x: torch.Tensor, r: torch.Tensor, up_ok: torch.Tensor, down_ok: torch.Tensor,
          up_prio: torch.Tensor, down_prio: torch.Tensor):
    """One flip stage on rows ``[R, K]``: returns ``(r, direction [R], flips [R], rank [R, K], valid [R, K], sum [R])``."""
    total = (r - x).sum(1)
    direction = torch.where(total < 0, 1.0, -1.0).to(x.dtype)  # +1: round more elements up
    up = (direction > 0).unsqueeze(1)
    valid = torch.where(up, up_ok, down_ok)
    prio = torch.where(up, up_prio, down_prio)
    prio = torch.where(valid, prio, torch.full_like(prio, -1.0))
    order = torch.argsort(prio, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(x.shape[1], device=x.device).expand_as(order))
    wanted = torch.round(total.abs()).to(torch.long)
    flips = torch.minimum(wanted, valid.sum(1))
    flip = valid & (rank < flips.unsqueeze(1))
    r = r + flip.to(r.dtype) * direction.unsqueeze(1)
    return r, direction, flips, rank, valid, total


@torch.no_grad()
def squant_round(x: torch.Tensor, quant_min: int, quant_max: int, *, kernel: bool = True,
                 channel: bool = True) -> torch.Tensor:
    """SQuant-rounded integer codes of ``x`` (float codes, same shape).

    Args:
        x: ``W / s + z`` for a weight ``[C_out, C_in/groups, kh, kw]`` (conv) or ``[C_out, C_in]``
            (linear), any float dtype; computed in float64.
        quant_min, quant_max: the integer grid; ``x`` is clamped to it first.
        kernel: apply the kernel-wise flips (SQuant-K).
        channel: apply the channel-wise flips (SQuant-C).
    Returns:
        Float tensor of integers in ``[quant_min, quant_max]``; with both flags off, plain
        round-half-to-even.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a weight-shaped tensor with at least 2 dims [C_out, C_in, ...], got "
                         f"{getattr(x, 'shape', x)!r}")
    if quant_min >= quant_max:
        raise ValueError(f"quant_min ({quant_min}) must be below quant_max ({quant_max})")
    shape, dtype = x.shape, x.dtype
    xc = x.detach().double().clamp(quant_min, quant_max)
    r0 = torch.round(xc)
    e0 = r0 - xc
    up_ok = (e0 < 0) & (r0 < quant_max)
    down_ok = (e0 > 0) & (r0 > quant_min)
    mag = e0.abs()
    out_ch = shape[0]
    per_kernel = xc[0, 0].numel() if xc.dim() > 2 else 1
    r = r0
    c_up, c_down, c_prio = up_ok, down_ok, mag
    if kernel and per_kernel > 1:
        rows = (-1, per_kernel)
        xk, rk = xc.reshape(rows), r0.reshape(rows)
        rk, direction, flips, rank, valid, total = _flip(xk, rk, up_ok.reshape(rows), down_ok.reshape(rows),
                                                         mag.reshape(rows), mag.reshape(rows))
        # the one C-stage candidate of each kernel
        over = (flips >= 1) & (flips.to(total.dtype) >= total.abs())
        last = valid & (rank == (flips - 1).unsqueeze(1)) & over.unsqueeze(1)
        nxt = valid & (rank == flips.unsqueeze(1)) & (~over).unsqueeze(1)
        d = direction.unsqueeze(1)
        c_up = (last & (d < 0)) | (nxt & (d > 0))
        c_down = (last & (d > 0)) | (nxt & (d < 0))
        mk = mag.reshape(rows)
        c_prio = torch.where(last, 1.0 - mk, mk)
        r = rk.reshape(shape)
        c_up, c_down, c_prio = c_up.reshape(shape), c_down.reshape(shape), c_prio.reshape(shape)
    if channel:
        rows = (out_ch, -1)
        rc, *_ = _flip(xc.reshape(rows), r.reshape(rows), c_up.reshape(rows), c_down.reshape(rows),
                       c_prio.reshape(rows), c_prio.reshape(rows))
        r = rc.reshape(shape)
    return r.to(dtype)


def _channel_view(v: torch.Tensor, ndim: int, axis: Optional[int]) -> torch.Tensor:
    if axis is None:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


@torch.no_grad()
def squant_codes(weight: torch.Tensor, quantizer: UniformQuantizer, *, kernel: bool = True,
                 channel: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes, scale, zero_point)`` of ``weight`` on the grid of a calibrated weight quantizer.

    Per-channel quantizers must use axis 0 (output channels); codes are float integers shaped
    like ``weight``, so ``(codes - z) * s`` is the SQuant-rounded weight.
    """
    if not isinstance(quantizer, UniformQuantizer):
        raise TypeError(f"quantizer must be a UniformQuantizer, got {type(quantizer).__name__}")
    axis = quantizer.spec.resolve_axis(weight.dim())
    if axis not in (None, 0):
        raise ValueError(f"SQuant needs per-output-channel (axis 0) or per-tensor weight grids, got axis {axis}")
    scale, zp = quantizer.qparams()
    s = _channel_view(scale.double(), weight.dim(), axis)
    z = _channel_view(zp.double(), weight.dim(), axis)
    x = weight.detach().double() / s + z
    codes = squant_round(x, quantizer.quant_min, quantizer.quant_max, kernel=kernel, channel=channel)
    return codes, scale, zp


@torch.no_grad()
def apply_squant(qmodel: nn.Module, *, kernel: bool = True, channel: bool = True) -> Dict[str, int]:
    """Round the weights of every quantized layer of ``qmodel`` by SQuant, in place.

    Each layer's float weight is replaced by its SQuant grid point ``(q - z) s``; the layer's
    own :class:`UniformQuantizer` (unchanged) then reproduces exactly those codes, so the
    fake-quant model, the integer runtime and exports all see the SQuant rounding. Returns
    ``{layer name: number of elements whose rounding differs from round-to-nearest}``.
    Layers whose weight quantizer is absent, disabled or not a calibrated UniformQuantizer are
    skipped.
    """
    from .modules import QuantLayer  # local: modules imports calibration, which is heavier

    changed = {}
    for name, layer in qmodel.named_modules():
        if not isinstance(layer, QuantLayer):
            continue
        wq = layer.weight_quantizer
        if not isinstance(wq, UniformQuantizer) or not wq.enabled or not wq.calibrated:
            continue
        codes, scale, zp = squant_codes(layer.weight, wq, kernel=kernel, channel=channel)
        axis = wq.spec.resolve_axis(layer.weight.dim())
        s = _channel_view(scale.double(), codes.dim(), axis)
        z = _channel_view(zp.double(), codes.dim(), axis)
        nearest = torch.round((layer.weight.double() / s + z).clamp(wq.quant_min, wq.quant_max))
        w_new = ((codes - z) * s).to(layer.weight.dtype)
        layer.weight.copy_(w_new)
        if not torch.equal(wq(layer.weight), layer.weight):
            raise RuntimeError(f"SQuant weights of {name!r} are not reproduced by their quantizer")
        changed[name] = int((codes != nearest).sum())
    return changed
