"""Accelerated forwards of ``torch.ao.quantization.FakeQuantize`` and ``_LearnableFakeQuantize``.

Both keep their observer / flag logic (re-stated here) and swap only the fake-quant call:
``torch.fake_quantize_per_{tensor,channel}_affine`` -> ``ops.fake_quant`` (bit-identical,
including the straight-through mask) and ``torch._fake_quantize_learnable_per_*_affine`` ->
``ops.lsq_fake_quant`` (same forward and input gradient; the scale / zero-point gradients are the
same per-element terms summed in another order, and at an exact rounding tie with an odd zero
point the per-tensor scale gradient follows the forward's rounding, see ``ops.lsq_fake_quant``).
The fused ops never read a CUDA tensor on the host, unlike the native learnable op.
"""
from __future__ import annotations

import torch

from .. import ops
from ._common import fusable_input


def fake_quantize_forward(self, x, *, original):
    if not fusable_input(x):
        return original(self, x)
    if self.observer_enabled[0] == 1:
        self.activation_post_process(x.detach())
        new_scale, new_zero_point = self.calculate_qparams()
        new_scale = new_scale.to(self.scale.device)
        new_zero_point = new_zero_point.to(self.zero_point.device)
        if self.scale.shape != new_scale.shape:
            self.scale.resize_(new_scale.shape)
            self.zero_point.resize_(new_zero_point.shape)
        self.scale.copy_(new_scale)
        self.zero_point.copy_(new_zero_point)
    if self.fake_quant_enabled[0] != 1:
        return x
    observer = self.activation_post_process
    axis = self.ch_axis if self.is_per_channel else None
    return ops.fake_quant(x, self.scale, self.zero_point, int(observer.quant_min), int(observer.quant_max), axis)


_SYMMETRIC = (torch.per_channel_symmetric, torch.per_tensor_symmetric)
_PER_CHANNEL = (torch.per_channel_symmetric, torch.per_channel_affine)


def learnable_fake_quantize_forward(self, x, *, original):
    if not fusable_input(x):
        return original(self, x)
    if self.static_enabled[0] == 1:
        self.activation_post_process(x.detach())
        new_scale, new_zero_point = self.activation_post_process.calculate_qparams()
        self.scale.data.copy_(new_scale.to(self.scale.device))
        self.zero_point.data.copy_(new_zero_point.to(self.zero_point.device))
    else:
        # the original clamps with eps.item(), a host sync; the tensor bound gives the same values
        self.scale.data.clamp_(min=self.eps.to(self.scale.dtype))
    if self.fake_quant_enabled[0] != 1:
        return x
    if self.qscheme in _SYMMETRIC:
        self.zero_point.data.zero_()
    grad_factor = 1.0 / (x.numel() * self.quant_max) ** 0.5 if self.use_grad_scaling else 1.0
    axis = self.ch_axis if self.qscheme in _PER_CHANNEL else None
    return ops.lsq_fake_quant(x, self.scale, self.zero_point, int(self.quant_min), int(self.quant_max), axis,
                              grad_factor=grad_factor)
