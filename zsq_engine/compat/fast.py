"""``accelerate(model, exact=False)``: one fused kernel per quantizer, last-bit tolerance.

The exact forwards (:mod:`.brecq`, :mod:`.qdrop`) keep the research code's ``x / delta`` and
``* delta`` as torch ops so every bit matches; that costs four extra full-size passes (two
forward, two backward) per call. Here the whole quantizer is one ``ops.lsq_fake_quant`` /
``ops.fake_quant`` / ``ops.qdrop_fake_quant`` launch per direction. The gradients are the same
formulas (BRECQ's straight-through ``round`` through ``x / delta`` and ``* delta`` differentiates to
LSQ's step gradient without grad scaling; QDrop's LSQ / LSQ+ grad scaling is ``grad_factor``),
but the kernels multiply by ``1 / scale`` where the research code divides, so ``x * (1/s)`` and
``x / s`` differ in the last bit now and then and a value sitting on a rounding tie may land
on the other side: outputs differ from the original's on a tiny fraction of elements, by one
step. QDrop masks come from the fused counter-based generator, seeded from torch's CPU
generator (reproducible under ``torch.manual_seed``, but not the original's masks).

Styles without a fast forward here (AdaRound, Genie, torch.ao, fixed QDrop) use their exact
accelerated forward; anything a fast forward does not take goes to the exact forward.
"""
from __future__ import annotations

import torch

from .. import ops
from ._common import fusable_input, integral, needs_grad, zero_point_layout
from .qdrop import _grad_factor, _usable, keep_step_positive


def _draw_seed() -> int:
    # from torch's CPU generator: reproducible under torch.manual_seed, and no device sync
    return int(torch.randint(0, 2 ** 62, (1,)).item())


def _like(zero_point, scale: torch.Tensor) -> torch.Tensor:
    """A zero point (number or tensor) as a float tensor shaped like ``scale``."""
    if isinstance(zero_point, torch.Tensor):
        return zero_point.detach().float().reshape(-1).expand(scale.shape)
    return torch.full(scale.shape, float(zero_point), device=scale.device)


def brecq_uniform_fast(self, x, *, original):
    if self.inited is not True or not fusable_input(x) or not isinstance(self.delta, torch.Tensor):
        return original(self, x)
    zp_layout, delta_layout = zero_point_layout(self.zero_point, x), zero_point_layout(self.delta, x)
    if zp_layout is None or delta_layout is None or needs_grad(self.zero_point) or not integral(self.zero_point):
        return original(self, x)
    (zp, zp_axis), (delta, axis) = zp_layout, delta_layout
    if zp_axis is not None and zp_axis != axis:
        return original(self, x)
    zp = _like(zp, delta)
    quant_max = int(self.n_levels) - 1
    if needs_grad(self.delta):
        return ops.lsq_fake_quant(x, delta, zp, 0, quant_max, axis)
    return ops.fake_quant(x, delta, zp, 0, quant_max, axis)


def _qdrop_fast(self, x, zero_point, original):
    if not _usable(self, x):
        return original(self, x)
    keep_step_positive(self)
    per_channel = self.ch_axis != -1
    axis = self.ch_axis % x.dim() if per_channel else None
    scale = self.scale.reshape(-1) if per_channel else self.scale.reshape(1)
    zero_point = zero_point.reshape(-1) if per_channel else zero_point.reshape(1)
    factor = _grad_factor(self, x, per_channel)
    qmin, qmax = int(self.quant_min), int(self.quant_max)
    if self.drop_prob < 1.0:
        return ops.qdrop_fake_quant(x, scale, zero_point, qmin, qmax, axis, p=float(self.drop_prob),
                                    seed=_draw_seed(), learnable=True, grad_factor=factor)
    return ops.lsq_fake_quant(x, scale, zero_point, qmin, qmax, axis, grad_factor=factor)


def qdrop_lsq_fast(self, x, *, original):
    return _qdrop_fast(self, x, self.zero_point.detach().float(), original)


def qdrop_lsq_plus_fast(self, x, *, original):
    # the learnable zero point is clamped to the range as the original does before using it
    if _usable(self, x):
        self.zero_point.data.clamp_(self.quant_min, self.quant_max)
    return _qdrop_fast(self, x, self.zero_point, original)


FAST_FORWARDS = {
    "brecq_uniform": brecq_uniform_fast,
    "qdrop_lsq": qdrop_lsq_fast,
    "qdrop_lsq_plus": qdrop_lsq_plus_fast,
}
