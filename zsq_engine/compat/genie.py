"""Accelerated forwards of the Genie-style weight and activation quantizers. Attributes read and
the exact semantics: docs/compat.md.
"""
from __future__ import annotations

import torch

from .. import ops
from ._common import divide_by_step, fusable_input, integral, needs_grad, zero_point_layout
from .functions import round_ste


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


def activation_forward(self, x, *, original):
    if not self.initialized or not fusable_input(x) or not isinstance(self.scale, torch.Tensor):
        # the lazy scale initialisation (and anything unusual) stays the original's
        return original(self, x)
    n_bits = int(self.n_bits)
    signed = bool(self.signed)  # the original reads it the same way (a host read if it is a tensor)
    q_neg = -(2 ** (n_bits - 1)) if signed else 0
    q_pos = 2 ** (n_bits - 1) - 1 if signed else 2 ** n_bits - 1
    v_hat = round_ste(torch.clamp(divide_by_step(x, self.scale), q_neg, q_pos)) * self.scale
    if self.train_mode:
        return torch.where(torch.rand_like(x) < 0.5, v_hat, x)
    return v_hat
