"""Accelerated forward of the Genie-style weight quantizer.

``WeightQuantizer``: attributes ``n_bits``, ``x_floor`` (frozen ``floor(W / s0)``), ``bit_logit``
(rounding logits, Parameter), ``scale`` (learned, Parameter ``[C, 1, ...]``), ``zero_point``,
``train_mode`` (soft rounding while True) and a rectified sigmoid (``gamma=-0.1``, ``zeta=1.1``);
``forward()`` takes no input and returns
``(clamp(x_floor + h(bit_logit) + zp, 0, 2^n_bits - 1) - zp) * scale``. That is exactly
``ops.adaround_fake_quant`` with Genie-M's learned step: one fused pass forward, one backward
giving the logits and the scale their gradients. Hard rounding (``train_mode`` False) is
bit-exact; the soft forward / gradients may differ from torch's in the last bit (kernel sigmoid,
product and reduction order; see docs/compat.md).

Genie's activation quantizer (lazy scalar scale, ``round_ste(clamp(x / s, Qn, Qp)) * s`` with
QDrop from ``torch.rand_like``) is detected but left alone: its straight-through gradient passes
where ``x / s`` lies in ``[Qn, Qp]`` *before* rounding, a mask none of the fused ops computes, and
the rest (a division and a product) is no faster fused. See :mod:`.detect`.
"""
from __future__ import annotations

import torch

from .. import ops
from ._common import fusable_input, integral, needs_grad, zero_point_layout


def weight_forward(self, *args, original, **kwargs):
    if args or kwargs:  # not the no-input contract
        return original(self, *args, **kwargs)
    x_floor, logits, scale, zero_point = self.x_floor, self.bit_logit, self.scale, self.zero_point
    if not (fusable_input(x_floor) and isinstance(logits, torch.Tensor) and logits.dtype == x_floor.dtype
            and logits.shape == x_floor.shape and isinstance(scale, torch.Tensor)):
        return original(self)
    zp_layout = zero_point_layout(zero_point, x_floor)
    scale_layout = zero_point_layout(scale, x_floor)
    if zp_layout is None or scale_layout is None or needs_grad(zero_point) or not integral(zero_point):
        return original(self)
    (zp, zp_axis), (flat_scale, axis) = zp_layout, scale_layout
    if zp_axis is not None and zp_axis != axis:
        return original(self)
    if not isinstance(zp, torch.Tensor):
        zp = torch.full_like(flat_scale, float(zp))
    elif zp.numel() != flat_scale.numel():
        zp = zp.expand_as(flat_scale)
    return ops.adaround_fake_quant(x_floor, logits, flat_scale, zp, 0, 2 ** int(self.n_bits) - 1, axis,
                                   hard=not self.train_mode)
