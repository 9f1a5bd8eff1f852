"""Accelerated forwards of BRECQ-style quantizers (also the ones QDrop and many forks copy).

``UniformAffineQuantizer``: attributes ``n_bits``, ``sym``, ``channel_wise``, ``delta``,
``zero_point``, ``n_levels``, ``inited`` (``delta`` an ``nn.Parameter`` when ``leaf_param``);
forward ``(clamp(round_ste(x / delta) + zp, 0, n_levels - 1) - zp) * delta`` after a lazy
initialisation on the first call. Accelerated: ``x / delta`` and ``* delta`` stay torch
divisions and products (bit-exact; a learnable scalar ``delta`` gets the original's gradient bits
from a cheaper backward, see ``_common.divide_by_step``), the round / clamp / straight-through
part is one fused ``ops.fake_quant`` pass with scale 1.

``AdaRoundQuantizer`` (``round_mode='learned_hard_sigmoid'``): attributes ``alpha``,
``soft_targets``, ``delta``, ``zero_point``, ``n_levels``, ``gamma``, ``zeta``; forward
``(clamp(floor(x / delta) + h + zp, 0, n_levels - 1) - zp) * delta`` with the rectified sigmoid
``h(alpha)`` (soft) or ``alpha >= 0`` (hard). Accelerated: ``floor(x / delta)`` as torch ops,
then ``ops.adaround_fake_quant``. Hard rounding is bit-exact; the soft forward and the alpha
gradient use the kernels' own sigmoid and product order, so they may differ from torch's in the
last bit (see docs/compat.md).

Every forward falls back to the original for what the fused ops do not take (not yet
initialised, float64 inputs, other rounding modes, a zero point that is not an integer or that
is being learned, layouts other than per-tensor / one channel axis).
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
