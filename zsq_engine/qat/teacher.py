"""The copy of the frozen teacher that ZAQ's and HAST's objectives run.

Those methods only need the teacher's function (logits and block / stage outputs), so the
trainer hands them a copy that computes it with fewer operations: every conv -> BN pair folded
(no BN forward or backward in the training steps) and 3x3 convolutions with few input or output
channels run as GEMMs on CPU (:func:`zsq_engine.ops.conv3x3_narrow`; oneDNN is slow there). Same
function up to float rounding; module names are kept, so feature taps find the same layers. GDFQ
keeps the teacher as given: its generator objective reads the teacher's BN inputs.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.conv_forms import conv2d_narrow_aware
from ..quant.bn_fold import fold_model_bn

__all__ = ["NarrowAwareConv2d", "fast_frozen_copy"]


class NarrowAwareConv2d(nn.Conv2d):
    """``nn.Conv2d`` that takes :func:`~zsq_engine.ops.conv3x3_narrow` where it pays (zero padding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            return super().forward(x)
        return conv2d_narrow_aware(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def fast_frozen_copy(teacher: nn.Module) -> nn.Module:
    """A frozen (eval, ``requires_grad=False``) copy of ``teacher`` with BN folded into the
    convolutions and its plain ``nn.Conv2d`` layers computing narrow convolutions as GEMMs."""
    # folding builds new conv modules, whose default initialisation would draw from the global RNG
    # and shift everything the seed drives after it (the generator's initial weights): keep it out
    with torch.random.fork_rng(devices=[]):
        copy = fold_model_bn(teacher).eval()
    for module in copy.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = NarrowAwareConv2d   # same state, one method more
    for p in copy.parameters():
        p.requires_grad_(False)
    return copy
