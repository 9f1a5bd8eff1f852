"""Fold BatchNorm2d into the preceding Conv2d (evaluation-mode semantics).

For a conv ``y = W * x + b`` followed by an eval-mode BN with running statistics
``(mu, var)``, affine ``(gamma, beta)`` and ``eps``::

    BN(y) = gamma * (y - mu) / sqrt(var + eps) + beta = W' * x + b'
    W'[o] = W[o] * gamma[o] / sqrt(var[o] + eps)
    b'[o] = (b[o] - mu[o]) * gamma[o] / sqrt(var[o] + eps) + beta[o]

computed in float64 and rounded once to the conv's dtype. Only evaluation-mode equivalence is
promised: a BN in training mode normalises with batch statistics, which no conv can reproduce.
"""
from __future__ import annotations

import copy
import re
from typing import List, Optional, Tuple

import torch
from torch import nn

from .graph import replace_module, try_symbolic_trace

__all__ = ["fold_bn", "fold_model_bn", "find_conv_bn_pairs"]


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``nn.Conv2d`` (with bias) equal to ``bn(conv(x))`` in evaluation mode.

    The inputs are not modified. The result has the conv's geometry (stride, padding, dilation,
    groups, padding_mode), device, dtype, training flag and ``requires_grad``. For a subclass
    of ``nn.Conv2d`` the result is a deep copy of ``conv`` (same class, so a custom forward is
    kept) holding the folded weight and a bias.

    Raises:
        TypeError: conv / bn of the wrong type.
        ValueError: channel mismatch, or a BN without running statistics.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"bn must be an nn.BatchNorm2d, got {type(bn).__name__}")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"bn.num_features ({bn.num_features}) must equal conv.out_channels ({conv.out_channels})")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn has no running statistics (track_running_stats=False): it normalises with batch "
                         "statistics even in eval mode and cannot be folded")
    w = conv.weight.detach().double()
    c = conv.out_channels
    mean = bn.running_mean.detach().double()
    var = bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    factor = gamma / torch.sqrt(var + bn.eps)
    new_w = w * factor.reshape(c, *([1] * (w.dim() - 1)))
    new_b = (bias - mean) * factor + beta

    requires_grad = conv.weight.requires_grad
    weight = nn.Parameter(new_w.to(conv.weight.dtype), requires_grad=requires_grad)
    bias = nn.Parameter(new_b.to(conv.weight.dtype), requires_grad=requires_grad)
    if type(conv) is not nn.Conv2d:
        # A subclass may have its own forward (e.g. static "same" padding): keep its class and
        # state, swap in the folded parameters.
        folded = copy.deepcopy(conv)
        folded.weight, folded.bias = weight, bias
        return folded
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                       padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    folded.weight, folded.bias = weight, bias
    folded.train(conv.training)
    return folded


def _pairs_from_graph(model: nn.Module) -> Optional[List[Tuple[str, str]]]:
    """(conv, bn) qualified names where the BN's only input is that conv's output and the conv's
    output goes nowhere else; None if the model cannot be traced."""
    graph = try_symbolic_trace(model)
    if graph is None:
        return None
    modules = dict(model.named_modules())
    calls: dict = {}
    for node in graph.nodes:
        if node.op == "call_module":
            key = id(modules.get(node.target))
            calls[key] = calls.get(key, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not hasattr(src, "op") or src.op != "call_module":
            continue
        conv = modules.get(src.target)
        if not isinstance(conv, nn.Conv2d) or len(src.users) != 1:
            continue
        bn = modules[node.target]
        # A module called (or registered) more than once cannot be rewritten for one call site.
        if calls.get(id(conv)) != 1 or calls.get(id(bn)) != 1:
            continue
        pairs.append((src.target, node.target))
    return pairs


_CONV_NAME = re.compile(r"conv", re.IGNORECASE)


def _pairs_from_names(model: nn.Module) -> List[Tuple[str, str]]:
    """Attribute-pattern fallback, per parent module:

    1. sibling attributes whose names differ only by 'conv' -> 'bn' (conv1/bn1, conv/bn);
    2. a Conv2d child registered immediately before a BatchNorm2d child (Sequential layers,
       and lukemelas-style blocks: ``_expand_conv``/``_bn0``, ``_depthwise_conv``/``_bn1``).
    """
    pairs = []
    for parent_name, parent in model.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        children = list(parent.named_children())
        named = dict(children)
        for cn, c in children:
            if not isinstance(c, nn.Conv2d) or not _CONV_NAME.search(cn):
                continue
            bn_name = _CONV_NAME.sub("bn", cn, count=1)
            if isinstance(named.get(bn_name), nn.BatchNorm2d):
                pairs.append((prefix + cn, prefix + bn_name))
        for (cn, c), (bn_name, b) in zip(children, children[1:]):
            if isinstance(c, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                pairs.append((prefix + cn, prefix + bn_name))
    return pairs


def find_conv_bn_pairs(model: nn.Module) -> Tuple[List[Tuple[str, str]], str]:
    """``(pairs, how)``: foldable (conv name, bn name) pairs and 'fx' or 'names' (the fallback).

    Pairs whose channel counts differ or whose BN lacks running statistics are dropped.
    """
    pairs = _pairs_from_graph(model)
    how = "fx"
    if pairs is None:
        pairs, how = _pairs_from_names(model), "names"
    modules = dict(model.named_modules())
    kept = []
    used = set()
    for cn, bn_name in pairs:
        conv, bn = modules[cn], modules[bn_name]
        if bn.num_features != conv.out_channels or bn.running_mean is None:
            continue
        if cn in used or bn_name in used:
            continue
        used.update((cn, bn_name))
        kept.append((cn, bn_name))
    return kept, how


def fold_model_bn(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d; the BN becomes ``nn.Identity``.

    Detection: ``torch.fx`` symbolic tracing (a BN whose only input is a conv's output, that
    output used by nothing else; each module called once). If the model cannot be traced, the
    attribute patterns of ``_pairs_from_names`` are used instead (``convN``/``bnN`` siblings, a
    conv registered right before a BN); they trust that such a BN is applied to that conv's
    output only, as in torchvision- and lukemelas-style blocks. BNs that are not folded stay.

    Args:
        model: any module. Not modified unless ``inplace``.
        inplace: fold into ``model`` itself instead of a deep copy.
    Returns:
        The folded model (a copy unless ``inplace``); its outputs equal ``model``'s in eval mode
        up to fp32 rounding.
    """
    if not inplace:
        model = copy.deepcopy(model)
    pairs, _ = find_conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        replace_module(model, conv_name, fold_bn(conv, bn))
        replace_module(model, bn_name, nn.Identity())
    return model
