"""Cross-layer equalisation (DFQ, Nagel et al. 2019), in place on a float model (the maths and the
choice of default: docs/synth_free.md).
"""
from __future__ import annotations

import copy
from typing import List, Tuple

import torch
from torch import nn

from ..quant.graph import replace_module
from .clamp import ChannelClamp
from .graph import EqualizationPair, find_equalization_pairs

__all__ = ["RELU6_POLICIES", "cross_layer_equalize", "grids_invariant", "equalization_scales", "first_ranges", "second_ranges"]

RELU6_POLICIES = ("clamp", "relu", "auto", "skip")


def _bn_factor(bn: nn.BatchNorm2d) -> torch.Tensor:
    return bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)


def first_ranges(conv: nn.Conv2d, bn=None) -> torch.Tensor:
    """``r1 [C_out]`` float64: max |w| per output channel of ``conv`` with ``bn`` folded in."""
    w = conv.weight.detach().double().flatten(1).abs().amax(1)
    if bn is not None:
        w = w * _bn_factor(bn).abs()
    return w


def _grouped_view(weight: torch.Tensor, groups: int) -> torch.Tensor:
    # [O, C/g, ...] -> [g, O/g, C/g, rest]: input channel i is (i // (C/g), i % (C/g))
    o, cpg = weight.shape[0], weight.shape[1]
    return weight.reshape(groups, o // groups, cpg, -1)


def second_ranges(layer: nn.Module) -> torch.Tensor:
    """``r2 [C_in]`` float64: max |w| per input channel of a conv (any groups) or linear."""
    w = layer.weight.detach().double()
    groups = getattr(layer, "groups", 1)
    return _grouped_view(w, groups).abs().amax(dim=(1, 3)).reshape(-1)


def equalization_scales(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """``s = sqrt(r1 r2) / r2`` (1 where either range is 0): afterwards both ranges are sqrt(r1 r2)."""
    ok = (r1 > 0) & (r2 > 0)
    s = torch.ones_like(r1)
    s[ok] = torch.sqrt(r1[ok] * r2[ok]) / r2[ok]
    return s


@torch.no_grad()
def _scale_second_inputs(layer: nn.Module, s: torch.Tensor) -> None:
    w = layer.weight
    groups = getattr(layer, "groups", 1)
    view = _grouped_view(w.detach().double(), groups)
    view = view * s.reshape(groups, 1, -1, 1)
    w.copy_(view.reshape(w.shape).to(w.dtype))


@torch.no_grad()
def _scale_first_outputs(model: nn.Module, pair: EqualizationPair, s: torch.Tensor) -> None:
    if pair.bn is not None:
        bn = model.get_submodule(pair.bn)
        bn.weight.copy_((bn.weight.double() / s).to(bn.weight.dtype))
        bn.bias.copy_((bn.bias.double() / s).to(bn.bias.dtype))
    else:
        conv = model.get_submodule(pair.first)
        shape = (-1,) + (1,) * (conv.weight.dim() - 1)
        conv.weight.copy_((conv.weight.double() / s.reshape(shape)).to(conv.weight.dtype))
        if conv.bias is not None:
            conv.bias.copy_((conv.bias.double() / s).to(conv.bias.dtype))
    if pair.act_kind == "clamp":
        clamp = model.get_submodule(pair.act)
        clamp.upper.copy_((clamp.upper.double() / s).to(clamp.upper.dtype))


def _clip_inactive(model: nn.Module, pair: EqualizationPair, num_sigmas: float = 3.0) -> bool:
    if pair.bn is None:
        return False
    bn = model.get_submodule(pair.bn)
    return bool((bn.bias.detach() + num_sigmas * bn.weight.detach().abs()).max() <= 6.0)


def _prepare_relu6(model: nn.Module, pairs: List[EqualizationPair], policy: str) -> List[EqualizationPair]:
    kept = []
    for p in pairs:
        if p.act_kind == "relu6":
            if policy == "skip" or (policy == "auto" and not _clip_inactive(model, p)):
                continue
            channels = model.get_submodule(p.first).out_channels
            if policy in ("relu", "auto"):
                replace_module(model, p.act, nn.ReLU())
                p.act_kind = "relu"
            else:
                ref = model.get_submodule(p.first).weight
                replace_module(model, p.act, ChannelClamp(torch.full((channels,), 6.0, dtype=ref.dtype,
                                                                     device=ref.device)))
                p.act_kind = "clamp"
        kept.append(p)
    return kept


def grids_invariant(model: nn.Module, pair: EqualizationPair) -> bool:
    """True when per-output-channel weight grids of BOTH layers are unchanged by the pair's scales:
    the first layer's always are (each output channel is scaled as a whole), the second layer's
    when each of its output channels reads one input channel (depthwise, ``groups == in_channels``).
    Equalising such a pair only moves range into the per-tensor activation grid between them."""
    second = model.get_submodule(pair.second)
    return isinstance(second, nn.Conv2d) and second.groups == second.in_channels


@torch.no_grad()
def cross_layer_equalize(model: nn.Module, *, relu6: str = "clamp", max_sweeps: int = 50, tol: float = 1e-6,
                         inplace: bool = False, per_channel_weights: bool = False
                         ) -> Tuple[nn.Module, List[EqualizationPair]]:
    """Equalise every conv/depthwise/linear pair of ``model`` (see the module docstring).

    Args:
        model: float model (eval-mode BN semantics; BN layers may or may not be folded).
        relu6: 'clamp' (exact), 'relu' (paper), 'auto' or 'skip' (module docstring).
        max_sweeps: at most this many passes over all pairs.
        tol: stop when every scale of a pass is within ``tol`` of 1.
        inplace: modify ``model`` instead of a deep copy.
        per_channel_weights: the weights will be quantized per output channel (the engine's
            default): skip the pairs where that makes equalisation useless (:func:`grids_invariant`,
            e.g. expand conv -> depthwise). False: the paper's per-tensor setting, every pair.
    Returns:
        ``(model, pairs)``: the equalised model and the pairs that were equalised.
    Raises:
        ValueError: unknown ``relu6`` policy, or a model ``torch.fx`` cannot trace.
    """
    if relu6 not in RELU6_POLICIES:
        raise ValueError(f"relu6 must be one of {RELU6_POLICIES}, got {relu6!r}")
    if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, int) or max_sweeps < 1:
        raise ValueError(f"max_sweeps must be a positive int, got {max_sweeps!r}")
    if not inplace:
        model = copy.deepcopy(model)
    pairs = find_equalization_pairs(model)
    if pairs is None:
        raise ValueError("cross-layer equalisation needs a model torch.fx can trace (its pairs are read from the graph)")
    if per_channel_weights:
        pairs = [p for p in pairs if not grids_invariant(model, p)]
    pairs = _prepare_relu6(model, pairs, relu6)
    for _ in range(max_sweeps):
        worst = 0.0
        for p in pairs:
            first = model.get_submodule(p.first)
            bn = model.get_submodule(p.bn) if p.bn is not None else None
            second = model.get_submodule(p.second)
            s = equalization_scales(first_ranges(first, bn), second_ranges(second))
            _scale_first_outputs(model, p, s)
            _scale_second_inputs(second, s)
            worst = max(worst, float((s - 1).abs().max()))
        if worst < tol:
            break
    return model, pairs
