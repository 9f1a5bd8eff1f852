"""What the weight-only methods need to know about a float model's graph.

Cross-layer equalisation needs chains ``conv -> [BN] -> ReLU/ReLU6 -> [zero pad / identity /
dropout / average pool (+ flatten)] -> conv or linear`` in which every intermediate value has
exactly one consumer: only then does rescaling the channels of the first layer change nothing
but the weights of the second. Bias correction needs, for each layer, where its input comes
from (a BN through an activation, a residual add of such values, ...). Both are read from the
``torch.fx`` graph of :func:`zsq_engine.quant.graph.try_symbolic_trace`.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..quant.graph import try_symbolic_trace
from .clamp import ChannelClamp

__all__ = ["EqualizationPair", "node_kind", "find_equalization_pairs", "module_call_counts"]

_PASS_MODULES = (nn.Identity, nn.Dropout, nn.ZeroPad2d)
_RELU_FUNCS = (F.relu, torch.relu)
_RELU6_FUNCS = (F.relu6,)
_ADD_FUNCS = (operator.add, torch.add)
_FLATTEN_FUNCS = (torch.flatten,)


def node_kind(node: fx.Node, modules: Dict[str, nn.Module]) -> str:
    """A coarse kind: conv, linear, bn, relu, relu6, clamp, pass, avgpool, flatten, add, other."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, nn.Conv2d):
            return "conv"
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, nn.BatchNorm2d):
            return "bn"
        if isinstance(m, nn.ReLU6):
            return "relu6"
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, ChannelClamp):
            return "clamp"
        if isinstance(m, _PASS_MODULES) or _is_zero_pad(m):
            return "pass"
        if isinstance(m, nn.AdaptiveAvgPool2d) and _is_global(m.output_size):
            return "avgpool"
        if isinstance(m, nn.Flatten):
            return "flatten"
        return "other"
    if node.op == "call_function":
        if node.target in _RELU_FUNCS and not node.kwargs.get("inplace", False):
            return "relu"
        if node.target in _RELU6_FUNCS:
            return "relu6"
        if node.target in _ADD_FUNCS and len(node.args) == 2 and not node.kwargs:
            return "add"
        if node.target in _FLATTEN_FUNCS:
            return "flatten"
        return "other"
    if node.op == "call_method":
        if node.target == "relu":
            return "relu"
        if node.target == "add" and len(node.args) == 2 and not node.kwargs:
            return "add"
        if node.target == "flatten":
            return "flatten"
    return "other"


def _is_global(size) -> bool:
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    return all(s == 1 for s in sizes)


def _is_zero_pad(m: nn.Module) -> bool:
    # zero padding commutes with per-channel scaling (EfficientNet-Lite's TF "same" padding)
    from ..models.efficientnet_lite import SamePad2d
    return isinstance(m, SamePad2d) or (isinstance(m, nn.ConstantPad2d) and m.value == 0)


def module_call_counts(graph: fx.Graph) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


@dataclass
class EqualizationPair:
    """``first`` (conv) -> ``bn`` (or None) -> ``act`` -> ``between`` -> ``second`` (conv/linear).

    Names are qualified module names; ``act`` is a module name or None for a functional
    activation; ``act_kind`` is 'relu', 'relu6' or 'clamp'; ``through_pool`` is True when a
    global average pool (and flatten) sits between the two layers; ``zero_pad`` is True when a
    zero-padding module sits between them (the second layer then sees inserted zeros).
    """

    first: str
    bn: Optional[str]
    act: Optional[str]
    act_kind: str
    second: str
    through_pool: bool = False
    zero_pad: bool = False


def _skip_pass(node: fx.Node, modules) -> Optional[fx.Node]:
    """The first node from ``node`` on that is not an identity-like single-consumer step (None
    where such a step has several consumers)."""
    while node_kind(node, modules) == "pass":
        if len(node.users) != 1:
            return None
        node = next(iter(node.users))
    return node


def find_equalization_pairs(model: nn.Module) -> Optional[List[EqualizationPair]]:
    """Every equalisable pair of ``model`` in graph order; None if the model cannot be traced."""
    graph = try_symbolic_trace(model)
    if graph is None:
        return None
    modules = dict(model.named_modules())
    calls = module_call_counts(graph)
    pairs = []
    for node in graph.nodes:
        if node_kind(node, modules) != "conv" or calls.get(node.target) != 1 or len(node.users) != 1:
            continue
        first = modules[node.target]
        cur = _skip_pass(next(iter(node.users)), modules)
        bn = None
        if cur is not None and node_kind(cur, modules) == "bn":
            if calls.get(cur.target) != 1 or len(cur.users) != 1 or modules[cur.target].weight is None:
                continue
            bn = cur.target
            cur = _skip_pass(next(iter(cur.users)), modules)
        if cur is None:
            continue
        kind = node_kind(cur, modules)
        if kind not in ("relu", "relu6", "clamp") or len(cur.users) != 1:
            continue
        act = cur.target if cur.op == "call_module" else None
        # a ReLU6 / clamp module is rewritten by equalisation: it must serve this pair only
        if kind in ("relu6", "clamp") and act is not None and calls.get(act) != 1:
            continue
        if kind == "relu6" and act is None:
            continue  # a functional relu6 cannot be swapped for a per-channel clamp
        cur = next(iter(cur.users))
        pooled = padded = False
        ok = True
        while True:
            k = node_kind(cur, modules)
            if k in ("conv", "linear"):
                break
            if k == "pass" or (k == "avgpool" and not pooled) or (k == "flatten" and pooled):
                pooled = pooled or k == "avgpool"
                m = modules.get(cur.target) if cur.op == "call_module" else None
                padded = padded or (m is not None and (isinstance(m, nn.ZeroPad2d) or _is_zero_pad(m)))
                if len(cur.users) != 1:
                    ok = False
                    break
                cur = next(iter(cur.users))
                continue
            ok = False
            break
        if not ok or calls.get(cur.target) != 1:
            continue
        second = modules[cur.target]
        if cur.args[0] is None or len(cur.args) != 1 or cur.kwargs:
            continue
        if k == "conv" and (pooled or second.in_channels != first.out_channels):
            continue
        if k == "linear" and (not pooled or second.in_features != first.out_channels):
            continue
        pairs.append(EqualizationPair(node.target, bn, act, kind, cur.target, pooled, padded))
    return pairs
