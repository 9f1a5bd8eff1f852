"""Reference primitives of the fake-quant family: straight-through (STE), learnable (LSQ/LSQ+)
and their QDrop-fused forms. The oracle every kernel of the family is tested against.

Numerics follow PyTorch's native CPU kernels bit for bit:

* ``inv_scale = 1/scale`` in fp32, ``q = round_half_even(x * inv_scale) + zero_point`` in fp32
  (half/bfloat16 inputs are widened to fp32 first), clamp to ``[quant_min, quant_max]``,
  ``y = (q - zero_point) * scale`` in fp32 (exactly rounded), then converted to x's dtype
  (for half/bfloat16 that is a second rounding, exactly as PyTorch's native kernel does).
* STE: ``dx = dy`` where ``quant_min <= q <= quant_max``, else 0.
* LSQ: the zero point is rounded (half-even) and clamped to the range in the forward;
  per element ``dscale = dy * ((y - x) * inv_scale)`` inside the range and
  ``dy * (quant_min - zp)`` / ``dy * (quant_max - zp)`` when clamped below / above;
  ``dzero_point = -dy * scale`` when clamped, else 0; both times ``grad_factor`` and summed per
  channel (or over everything). The sums are accumulated in fp64 here: the oracle is more exact
  than any kernel, so kernels are compared against it within fp32 rounding.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ...opspec.checks import channel_view_shape
from ..reference.rng import uniform


def _broadcast(v: torch.Tensor, ndim: int, axis: Optional[int]) -> torch.Tensor:
    if axis is None:
        return v.reshape(())
    return v.reshape(channel_view_shape(ndim, axis))


def _quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, axis: Optional[int]):
    """(q unclamped fp32, inv_scale fp32 broadcast, zp fp32 broadcast)."""
    inv_scale = _broadcast(torch.reciprocal(scale.float()), x.dim(), axis)
    zp_b = _broadcast(zp, x.dim(), axis)
    q = torch.round(x.float() * inv_scale) + zp_b
    return q, inv_scale, zp_b


def _dequantize(q_clamped: torch.Tensor, zp_b: torch.Tensor, scale: torch.Tensor, x: torch.Tensor,
                axis: Optional[int]) -> torch.Tensor:
    # The fp32 product of an integer and an fp32 scale is the correctly rounded exact product;
    # 16-bit outputs are then rounded again from fp32, as PyTorch's native op does (its fp64
    # result also reaches half/bfloat16 through fp32).
    return ((q_clamped - zp_b) * _broadcast(scale.float(), x.dim(), axis)).to(x.dtype)


def rounded_zero_point(zero_point: torch.Tensor, quant_min: int, quant_max: int, clamp: bool) -> torch.Tensor:
    zp = torch.round(zero_point.float())
    return zp.clamp(quant_min, quant_max) if clamp else zp


def fq_forward(x, scale, zero_point, quant_min, quant_max, axis):
    """Primitive: fake-quantized x (x.dtype). ``zero_point`` must already hold integers."""
    q, _, zp_b = _quantize(x, scale, zero_point.float(), axis)
    return _dequantize(q.clamp(quant_min, quant_max), zp_b, scale, x, axis)


def fq_backward(dy, x, scale, zero_point, quant_min, quant_max, axis):
    """Primitive: straight-through gradient, dy where the unclamped value is in range, else 0."""
    q, _, _ = _quantize(x, scale, zero_point.float(), axis)
    return dy * ((q >= quant_min) & (q <= quant_max)).to(dy.dtype)


def lsq_backward(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                 quant_min: int, quant_max: int, axis: Optional[int], grad_factor: float
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Primitive: (dx in x.dtype, dscale shaped like scale, dzero_point shaped like zero_point)."""
    zp = rounded_zero_point(zero_point, quant_min, quant_max, clamp=True)
    q, inv_scale, zp_b = _quantize(x, scale, zp, axis)
    x32, dy32 = x.float(), dy.float()
    scale_b = _broadcast(scale.float(), x.dim(), axis)
    below, above = q < quant_min, q > quant_max
    inside = ~(below | above)
    y32 = (q.clamp(quant_min, quant_max) - zp_b) * scale_b
    dscale_inside = dy32 * (y32 - x32) * inv_scale
    dscale_clamped = torch.where(below, dy32 * (quant_min - zp_b), dy32 * (quant_max - zp_b))
    dscale_el = torch.where(inside, dscale_inside, dscale_clamped) * grad_factor
    dzp_el = torch.where(inside, torch.zeros_like(dy32), -dy32 * scale_b * grad_factor)
    dx = (dy32 * inside).to(dy.dtype)
    if axis is None:
        dscale = dscale_el.double().sum()
        dzp = dzp_el.double().sum()
    else:
        dims = [d for d in range(x.dim()) if d != axis]
        dscale = dscale_el.double().sum(dims) if dims else dscale_el.double()
        dzp = dzp_el.double().sum(dims) if dims else dzp_el.double()
    return (dx, dscale.to(scale.dtype).reshape(scale.shape),
            dzp.to(zero_point.dtype if zero_point.is_floating_point() else torch.float32).reshape(zero_point.shape))


# The fused "fake-quantize, then QDrop" activation primitives: an element is quantized where
# uniform(seed, index + offset) < p and passed through in float elsewhere.

def keep_mask(x: torch.Tensor, p: float, seed: int, offset: int) -> torch.Tensor:
    """Where QDrop keeps the quantized value: ``uniform(seed, i + offset) < p``, i row-major."""
    return uniform(seed, x.numel(), offset, device=x.device).reshape(x.shape) < p


def qdrop_fq_forward(x, scale, zero_point, quant_min, quant_max, axis, p, seed, offset):
    return torch.where(keep_mask(x, p, seed, offset),
                       fq_forward(x, scale, zero_point, quant_min, quant_max, axis), x)


def qdrop_fq_backward(dy, x, scale, zero_point, quant_min, quant_max, axis, p, seed, offset):
    return torch.where(keep_mask(x, p, seed, offset),
                       fq_backward(dy, x, scale, zero_point, quant_min, quant_max, axis), dy)


def qdrop_lsq_backward(dy, x, scale, zero_point, quant_min, quant_max, axis, grad_factor, p, seed, offset):
    keep = keep_mask(x, p, seed, offset)
    dx_q, dscale, dzp = lsq_backward(dy * keep.to(dy.dtype), x, scale, zero_point, quant_min, quant_max, axis,
                                     grad_factor)
    return torch.where(keep, dx_q, dy), dscale, dzp
