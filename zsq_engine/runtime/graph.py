"""The fake-quant model as a small graph of supported operations (``torch.fx``), each node mapped
to one canonical kind; anything else raises :class:`UnsupportedLayerError` naming it. The
table of kinds: docs/runtime.md.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..models.roles import is_same_padding
from ..quant.modules import QuantConv2d, QuantLayer, QuantLinear
from .channel_clamp import is_channel_clamp

__all__ = ["UnsupportedLayerError", "Node", "trace_model", "SUPPORTED"]

SUPPORTED = ("QuantConv2d, QuantLinear, BatchNorm2d after a quantized conv, ReLU, ReLU6, Hardtanh(0, 6), add, "
             "MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, ZeroPad2d / SamePad2d / F.pad(constant 0), Flatten, "
             "Identity, Dropout, ChannelClamp (DFQ)")


class UnsupportedLayerError(ValueError):
    """The model holds a layer or operation the integer runtime cannot execute."""


@dataclass
class Node:
    """One canonical operation. ``inputs`` are names of other nodes; ``module`` is set for
    quantized layers and BN; ``attrs`` hold the parameters of pools / pads / flatten."""

    name: str
    kind: str
    inputs: List[str]
    target: str = ""
    module: Optional[nn.Module] = None
    attrs: Dict[str, Any] = field(default_factory=dict)
    users: List[str] = field(default_factory=list)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        if isinstance(m, QuantLayer):
            return True
        if not any(isinstance(sub, QuantLayer) for sub in m.modules()):
            return True  # no quantized layer inside: one operation (supported or not)
        return super().is_leaf_module(m, qualified_name)


def _unsupported(what: str, hint: str = "") -> UnsupportedLayerError:
    return UnsupportedLayerError(f"{what} is not supported by the integer runtime{hint}. Supported: {SUPPORTED}")


def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _module_node(m: nn.Module, target: str) -> tuple:
    """(kind, attrs) for a leaf module, or raise naming it."""
    what = f"layer {target!r} ({type(m).__name__})"
    if isinstance(m, QuantConv2d):
        return "qconv", {}
    if isinstance(m, QuantLinear):
        return "qlinear", {}
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        raise _unsupported(what + " in float", ": quantize the model first (zsq_engine.quant.quantize_model) so "
                           "every conv / linear is a QuantConv2d / QuantLinear")
    if isinstance(m, nn.BatchNorm2d):
        return "bn", {}
    if type(m) in (nn.ReLU,):
        return "relu", {}
    if type(m) is nn.ReLU6 or (type(m) is nn.Hardtanh and m.min_val == 0.0 and m.max_val == 6.0):
        return "relu6", {}
    if type(m) in (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout):
        return "identity", {}
    if type(m) is nn.Flatten:
        if m.start_dim != 1 or m.end_dim != -1:
            raise _unsupported(what + f" with start_dim={m.start_dim}, end_dim={m.end_dim}", " (only 1, -1)")
        return "flatten", {}
    if type(m) is nn.MaxPool2d:
        if m.return_indices:
            raise _unsupported(what + " with return_indices=True")
        return "maxpool", {"kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                           "padding": _pair(m.padding), "dilation": _pair(m.dilation), "ceil_mode": bool(m.ceil_mode)}
    if type(m) is nn.AdaptiveAvgPool2d:
        if _pair(m.output_size) != [1, 1]:
            raise _unsupported(what + f" with output_size={m.output_size}", " (only global pooling, 1x1)")
        return "avgpool", {"global": True}
    if type(m) is nn.AvgPool2d:
        if m.divisor_override is not None:
            raise _unsupported(what + " with divisor_override")
        return "avgpool", {"global": False, "kernel_size": _pair(m.kernel_size),
                           "stride": _pair(m.stride or m.kernel_size), "padding": _pair(m.padding),
                           "ceil_mode": bool(m.ceil_mode), "count_include_pad": bool(m.count_include_pad)}
    if type(m) is nn.ZeroPad2d:
        return "pad", {"pads": list(m.padding)}
    if is_same_padding(m):
        return "pad", {"same": [int(m.kernel_size), int(m.stride)]}
    if is_channel_clamp(m):
        return "relu_chclamp", {"upper": m.upper.detach()}
    raise _unsupported(what)


def _arg(node: fx.Node, i: int, key: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def _function_node(n: fx.Node) -> tuple:
    t = n.target
    what = f"operation {getattr(t, '__name__', str(t))!r} (node {n.name!r})"
    if t in (operator.add, operator.iadd, torch.add):
        if _arg(n, 2, "alpha", 1) != 1:
            raise _unsupported(what + " with alpha != 1")
        return "add", {}
    if t in (F.relu, torch.relu):
        return "relu", {}
    if t is F.relu6:
        return "relu6", {}
    if t is F.hardtanh and _arg(n, 1, "min_val", -1.0) == 0.0 and _arg(n, 2, "max_val", 1.0) == 6.0:
        return "relu6", {}
    if t in (F.dropout, F.dropout2d):
        return "identity", {}
    if t is torch.flatten:
        if _arg(n, 1, "start_dim", 0) != 1 or _arg(n, 2, "end_dim", -1) != -1:
            raise _unsupported(what + " other than flatten(x, 1)")
        return "flatten", {}
    if t is F.adaptive_avg_pool2d:
        if _pair(_arg(n, 1, "output_size")) != [1, 1]:
            raise _unsupported(what + " with output size other than 1")
        return "avgpool", {"global": True}
    if t is F.max_pool2d:
        k = _arg(n, 1, "kernel_size")
        s = _arg(n, 2, "stride") or k
        return "maxpool", {"kernel_size": _pair(k), "stride": _pair(s), "padding": _pair(_arg(n, 3, "padding", 0)),
                           "dilation": _pair(_arg(n, 4, "dilation", 1)), "ceil_mode": bool(_arg(n, 5, "ceil_mode", False))}
    if t is F.pad:
        if _arg(n, 2, "mode", "constant") != "constant" or (_arg(n, 3, "value", None) or 0) != 0:
            raise _unsupported(what + " other than constant zero padding")
        pads = list(_arg(n, 1, "pad"))
        if len(pads) != 4:
            raise _unsupported(what + f" padding {len(pads)} values", " (only the 4 spatial pads)")
        return "pad", {"pads": pads}
    raise _unsupported(what)


def _method_node(n: fx.Node) -> tuple:
    what = f"method Tensor.{n.target} (node {n.name!r})"
    if n.target in ("relu",):
        return "relu", {}
    if n.target == "contiguous":
        return "identity", {}
    if n.target == "flatten":
        if _arg(n, 1, "start_dim", 0) != 1 or _arg(n, 2, "end_dim", -1) != -1:
            raise _unsupported(what + " other than x.flatten(1)")
        return "flatten", {}
    if n.target == "mean":
        dims = _arg(n, 1, "dim")
        dims = sorted(d % 4 for d in (dims if isinstance(dims, (tuple, list)) else [dims]))
        if dims != [2, 3]:
            raise _unsupported(what + " over dims other than (2, 3)")
        return ("avgpool", {"global": True}) if _arg(n, 2, "keepdim", False) else ("avgpool_flat", {})
    raise _unsupported(what)


def trace_model(model: nn.Module) -> List[Node]:
    """Canonical nodes of ``model``'s forward in execution (topological) order, identities removed.

    The first node is the ``input``, the last the ``output``. Raises UnsupportedLayerError."""
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure gets one explanation
        raise UnsupportedLayerError(f"the model's forward could not be traced by torch.fx ({type(exc).__name__}: "
                                    f"{exc}); the integer runtime needs a forward without data-dependent "
                                    "control flow") from exc
    modules = dict(model.named_modules())
    nodes: List[Node] = []
    alias: Dict[str, str] = {}  # removed identity -> its input

    def inputs_of(n: fx.Node, count: int) -> List[str]:
        tensor_args = [a for a in n.args if isinstance(a, fx.Node)] + [v for v in n.kwargs.values()
                                                                        if isinstance(v, fx.Node)]
        if len(tensor_args) != count:
            raise _unsupported(f"node {n.name!r} ({n.op} {n.target}) with {len(tensor_args)} tensor inputs",
                               f" (expected {count})")
        return [alias.get(a.name, a.name) for a in tensor_args]

    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedLayerError(f"the model's forward takes {len(placeholders)} inputs; the integer runtime "
                                    "supports exactly one image tensor")
    for n in graph.nodes:
        if n.op == "placeholder":
            nodes.append(Node(n.name, "input", []))
            continue
        if n.op == "output":
            if not isinstance(n.args[0], fx.Node):
                raise UnsupportedLayerError("the model returns a tuple / structure; the integer runtime supports "
                                            "one output tensor")
            nodes.append(Node(n.name, "output", [alias.get(n.args[0].name, n.args[0].name)]))
            continue
        if n.op == "call_module":
            m = modules[n.target]
            kind, attrs = _module_node(m, n.target)
        elif n.op == "call_function":
            kind, attrs = _function_node(n)
            m = None
        elif n.op == "call_method":
            kind, attrs = _method_node(n)
            m = None
        else:
            raise _unsupported(f"node {n.name!r} ({n.op} {n.target})")
        ins = inputs_of(n, 2 if kind == "add" else 1)
        if kind == "identity":
            alias[n.name] = ins[0]
            continue
        if kind == "relu_chclamp":  # a ReLU (fused into the producer) + per-channel clip (channel_clamp.py)
            nodes.append(Node(n.name + "_relu", "relu", ins))
            nodes.append(Node(n.name, "chclamp", [n.name + "_relu"], target=str(n.target), module=m, attrs=attrs))
            continue
        if kind == "avgpool_flat":  # x.mean((2, 3)) == flatten(global average pool)
            nodes.append(Node(n.name + "_pool", "avgpool", ins, attrs={"global": True}))
            nodes.append(Node(n.name, "flatten", [n.name + "_pool"]))
            continue
        nodes.append(Node(n.name, kind, ins, target=str(n.target), module=m, attrs=attrs))
    by_name = {nd.name: nd for nd in nodes}
    for nd in nodes:
        for i in nd.inputs:
            by_name[i].users.append(nd.name)
    return nodes
