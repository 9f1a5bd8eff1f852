"""Accelerated forwards of QDrop-style fake quantizers (``LSQFakeQuantize``, ``LSQPlusFakeQuantize``,
``FixedFakeQuantize``). Attributes read and the exact semantics: docs/compat.md.
"""
from __future__ import annotations

import torch

from .. import ops
from ._common import divide_by_step, fusable_input, unit_scale, zero_point_layout


def _grad_scale(t, factor):
    # exactly the research code's expression: its value is not always bit-equal to t
    return (t - t * factor).detach() + t * factor


def _round_ste(t):
    return (t.round() - t).detach() + t


def _channel_shape(x, ch_axis):
    shape = [1] * x.dim()
    shape[ch_axis] = x.shape[ch_axis]
    return shape


def _grad_factor(self, x, per_channel):
    if not self.use_grad_scaling:
        return 1.0
    if per_channel:
        return 1.0 / (x.numel() / x.shape[self.ch_axis] * self.quant_max) ** 0.5
    return 1.0 / (x.numel() * self.quant_max) ** 0.5


def _fused_affine(t, zero_point, quant_min, quant_max):
    """``clamp(round(t) + zp, qmin, qmax) - zp`` with a straight-through gradient, one fused pass."""
    zp, axis = zero_point_layout(zero_point, t)
    return ops.fake_quant(t, unit_scale(zp), zp, int(quant_min), int(quant_max), axis)


def _qdrop(self, x_q, x_orig):
    if self.drop_prob < 1.0:
        return torch.where(torch.rand_like(x_q) < self.drop_prob, x_q, x_orig)
    return x_q


def _usable(self, x) -> bool:
    return (self.observer_enabled != 1 and self.fake_quant_enabled == 1 and fusable_input(x)
            and (self.ch_axis == -1 or -x.dim() <= self.ch_axis < x.dim()))


def keep_step_positive(self) -> None:
    """The original's bookkeeping on the step parameter before each forward (abs, then clamp at
    eps), without its host synchronisation (``eps.item()``)."""
    self.scale.data.abs_()
    self.scale.data.clamp_(min=self.eps.to(self.scale.dtype))


def lsq_forward(self, x, *, original):
    if not _usable(self, x):
        return original(self, x)
    keep_step_positive(self)
    per_channel = self.ch_axis != -1
    factor = _grad_factor(self, x, per_channel)
    if per_channel:
        shape = _channel_shape(x, self.ch_axis)
        scale = _grad_scale(self.scale, factor).reshape(shape)
        zero_point = self.zero_point.data.int().reshape(shape)
    else:
        scale = _grad_scale(self.scale, factor)
        zero_point = self.zero_point.data.reshape(1)
    x_q = _fused_affine(divide_by_step(x, scale), zero_point, self.quant_min, self.quant_max) * scale
    return _qdrop(self, x_q, x)


def lsq_plus_forward(self, x, *, original):
    if not _usable(self, x):
        return original(self, x)
    keep_step_positive(self)
    self.zero_point.data.clamp_(self.quant_min, self.quant_max)
    per_channel = self.ch_axis != -1
    factor = _grad_factor(self, x, per_channel)
    zero_point = _grad_scale(_round_ste(self.zero_point), factor)
    scale = _grad_scale(self.scale, factor)
    if per_channel:
        shape = _channel_shape(x, self.ch_axis)
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    carrier = zero_point - zero_point.detach()  # zeros that carry the zero-point gradient
    t = divide_by_step(x, scale) + carrier
    x_q = (_fused_affine(t, zero_point.detach(), self.quant_min, self.quant_max) - carrier) * scale
    return _qdrop(self, x_q, x)


def fixed_forward(self, x, *, original):
    if not _usable(self, x):
        return original(self, x)
    if self.ch_axis != -1:
        shape = _channel_shape(x, self.ch_axis)
        scale = self.scale.data.reshape(shape)
        zero_point = self.zero_point.data.int().reshape(shape)
    else:
        # the original divides by a python float here; so do we (same torch kernel path)
        scale = self.scale.item()
        zero_point = self.zero_point.data.reshape(1)
    x_q = _fused_affine(x / scale, zero_point, self.quant_min, self.quant_max) * scale
    return _qdrop(self, x_q, x)
