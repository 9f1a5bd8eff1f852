"""Accelerated forwards of BRECQ-style quantizers (``UniformAffineQuantizer``; also the ones
QDrop and many forks copy). Attributes read and the exact semantics: docs/compat.md.
"""
from __future__ import annotations

import torch

from .. import ops
from ._common import divide_by_step, fusable_input, integral, needs_grad, unit_scale, zero_point_layout


def uniform_affine_forward(self, x, *, original):
    if self.inited is not True or not fusable_input(x) or not isinstance(self.delta, torch.Tensor):
        return original(self, x)
    zero_point = self.zero_point
    layout = zero_point_layout(zero_point, x)
    if layout is None or needs_grad(zero_point) or not integral(zero_point):
        return original(self, x)
    t = divide_by_step(x, self.delta)
    if t.shape != x.shape:  # delta broadcasting beyond x: leave such layouts to the original
        return original(self, x)
    zp, axis = layout
    q = ops.fake_quant(t, unit_scale(zp), zp, 0, int(self.n_levels) - 1, axis)
    return q * self.delta


def adaround_forward(self, x, *, original):
    if getattr(self, "round_mode", "learned_hard_sigmoid") != "learned_hard_sigmoid":
        return original(self, x)
    delta, zero_point = self.delta, self.zero_point
    if not fusable_input(x) or not isinstance(delta, torch.Tensor) or self.alpha is None:
        return original(self, x)
    if self.alpha.dtype != x.dtype or self.alpha.shape != x.shape:
        return original(self, x)
    zp_layout = zero_point_layout(zero_point, x)
    delta_layout = zero_point_layout(delta, x)
    if zp_layout is None or delta_layout is None or needs_grad(zero_point) or not integral(zero_point):
        return original(self, x)
    (zp, zp_axis), (scale, scale_axis) = zp_layout, delta_layout
    if zp_axis != scale_axis and zp_axis is not None:
        return original(self, x)
    axis = scale_axis
    if axis is not None and not isinstance(zp, torch.Tensor):
        zp = torch.full_like(scale, float(zp))
    elif axis is not None and zp.numel() != scale.numel():
        zp = zp.expand_as(scale)
    if axis is None and isinstance(zp, torch.Tensor):
        zp = zp.reshape(1)
    x_floor = torch.floor(x / delta)
    out = ops.adaround_fake_quant(x_floor, self.alpha, scale, zp, 0, int(self.n_levels) - 1, axis,
                                  hard=not self.soft_targets)
    if needs_grad(x):
        # the original hands x an all-zero gradient through floor(); keep that (+0 changes no value)
        out = out + (x_floor - x_floor.detach())
    return out
