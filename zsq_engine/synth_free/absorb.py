"""High-bias absorption (DFQ section 4.2), in place on an equalised float model.

For a pair ``conv1 -> BN -> act -> conv2`` the BN output of channel ``i`` is modelled as
``N(beta_i, gamma_i^2)``; ``c_i = max(0, beta_i - 3 |gamma_i|)`` is (almost surely, 99.87 % of a
Gaussian) below every value it takes, so ``act(x - c) = act(x) - c`` and the shift moves from the
activation into the next layer's bias: ``beta_i -= c_i``, ``b2 += W2 c``. Smaller activation
ranges follow, which is what equalisation's large scales tend to spoil.

The identity is exact only for values that stay above ``c`` and, for a spatial ``conv2`` with
zero padding, only away from the border (padding inserts 0 where the shifted model would need
``-c``). The paper accepts both; this module by default skips pairs whose second layer sees
zero padding (``padded=True`` restores the paper's choice): on EfficientNet-Lite0's 7x7 and
14x14 maps with 5x5 depthwise kernels most outputs touch the border, and absorbing there cost
the FLOAT model 0.6 points of top-1 (measured: docs/synth_free.md). A :class:`ChannelClamp`
keeps its upper bounds consistent (``upper -= c``, ``c <= upper``).
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from .graph import EqualizationPair

__all__ = ["absorb_high_bias", "absorbable_shift", "weighted_channel_sum", "NUM_SIGMAS"]

NUM_SIGMAS = 3.0


def absorbable_shift(beta: torch.Tensor, gamma: torch.Tensor, num_sigmas: float = NUM_SIGMAS) -> torch.Tensor:
    """``c = max(0, beta - num_sigmas |gamma|)`` (elementwise)."""
    return torch.clamp(beta - num_sigmas * gamma.abs(), min=0)


def weighted_channel_sum(weight: torch.Tensor, groups: int, c: torch.Tensor) -> torch.Tensor:
    """``W c`` for an input that is the constant ``c[i]`` on channel ``i``: ``[C_out]`` float64.

    ``weight`` is a conv weight ``[O, C/groups, kh, kw]`` (summed over the kernel) or a linear
    weight ``[O, C]`` (``groups = 1``).
    """
    w = weight.detach().double()
    o, cpg = w.shape[0], w.shape[1]
    view = w.reshape(groups, o // groups, cpg, -1).sum(-1)          # [g, O/g, C/g]
    return torch.einsum("gok,gk->go", view, c.reshape(groups, cpg)).reshape(o)


def _sees_zero_padding(model: nn.Module, pair: EqualizationPair) -> bool:
    second = model.get_submodule(pair.second)
    pad = getattr(second, "padding", "valid") if isinstance(second, nn.Conv2d) else "valid"
    own = pad != "valid" and (isinstance(pad, str) or any(int(v) > 0 for v in pad))
    return pair.zero_pad or own


@torch.no_grad()
def absorb_high_bias(model: nn.Module, pairs: List[EqualizationPair],
                     num_sigmas: float = NUM_SIGMAS, padded: bool = False) -> Dict[str, torch.Tensor]:
    """Absorb ``c`` of every pair with a BN into the next layer's bias. Returns ``{first name: c}``.

    Pairs without BN (no statistics) are skipped, and unless ``padded``, pairs whose second
    layer sees zero padding (its own or a padding module's). A second layer without bias gets one.
    """
    absorbed = {}
    for p in pairs:
        if p.bn is None or (not padded and _sees_zero_padding(model, p)):
            continue
        bn = model.get_submodule(p.bn)
        c = absorbable_shift(bn.bias.detach().double(), bn.weight.detach().double(), num_sigmas)
        if p.act_kind == "clamp":
            clamp = model.get_submodule(p.act)
            c = torch.minimum(c, clamp.upper.double())
            clamp.upper.copy_((clamp.upper.double() - c).to(clamp.upper.dtype))
        if not bool((c > 0).any()):
            continue
        second = model.get_submodule(p.second)
        bn.bias.copy_((bn.bias.double() - c).to(bn.bias.dtype))
        shift = weighted_channel_sum(second.weight, getattr(second, "groups", 1), c)
        if second.bias is None:
            second.bias = nn.Parameter(torch.zeros(shift.numel(), dtype=second.weight.dtype,
                                                   device=second.weight.device),
                                       requires_grad=second.weight.requires_grad)
        second.bias.copy_((second.bias.double() + shift).to(second.bias.dtype))
        absorbed[p.first] = c
    return absorbed
