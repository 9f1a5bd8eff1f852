"""``convert(fake_quant_model) -> IntModel``: lower a fake-quant model to integer execution.

How (see ``docs/runtime.md`` for the full story):

1. :func:`zsq_engine.runtime.graph.trace_model` turns the forward into canonical nodes.
2. Fusion: each quantized conv / linear becomes one integer kernel together with what directly
   follows it when it is the only consumer: a BatchNorm (folded into scale and bias), ONE residual
   ``add`` (the other operand enters the epilogue as the residual; when both operands are
   quantized layers, the one computed later takes the add) and a ReLU / ReLU6.
3. Demands: the fake-quant model quantizes each layer's INPUT with that layer's own quantizer, so
   a value is needed as integer codes of every consumer's grid, and in float where the fake-quant
   model uses it unquantized (residual operands, average pooling, the model output, float-input
   layers). Max-pooling, zero padding and flatten commute with quantization and pass demands on
   (a max-pool whose float result is needed anyway pools once in float and quantizes after).
4. Emission: a fused kernel writes its value ONCE. If all consumers share one grid, the epilogue
   requantizes straight to it (int8 / uint8 NHWC). Otherwise (a float consumer, or two different
   grids) it writes fp32 and a quantize step produces each grid's codes from that value.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..quant.modules import QuantLayer
from .channel_clamp import clamp_step
from .graph import Node, UnsupportedLayerError, trace_model
from .model import IntModel
from .modules import IntConv2d, IntLinear
from .qparams import ActQParams, act_qparams

__all__ = ["convert"]

FLOAT = "F"
Rep = Union[str, ActQParams]
_TRANSPARENT = ("maxpool", "pad", "flatten", "chclamp")  # chclamp: runtime/channel_clamp.py


def _groups(nodes: List[Node], by_name: Dict[str, Node]) -> Dict[str, dict]:
    """head name -> {head, bn, add, residual, act, tail, members}."""
    index = {n.name: i for i, n in enumerate(nodes)}
    groups: Dict[str, dict] = {}
    tail_of: Dict[str, str] = {}
    for nd in nodes:
        if nd.kind not in ("qconv", "qlinear"):
            continue
        g = {"head": nd.name, "bn": None, "add": None, "residual": None, "act": "none", "tail": nd.name,
             "members": [nd.name]}
        if nd.kind == "qconv" and len(nd.users) == 1 and by_name[nd.users[0]].kind == "bn":
            g["bn"] = g["tail"] = nd.users[0]
            g["members"].append(nd.users[0])
        groups[nd.name] = g
        tail_of[g["tail"]] = nd.name
    for nd in nodes:
        if nd.kind == "bn" and not any(g["bn"] == nd.name for g in groups.values()):
            raise UnsupportedLayerError(f"layer {nd.target!r} (BatchNorm2d) does not directly follow a quantized "
                                        "conv whose only consumer it is, so it cannot be folded; fold it before "
                                        "quantizing (zsq_engine.quant.fold_model_bn)")
    for nd in nodes:
        if nd.kind != "add" or nd.inputs[0] == nd.inputs[1]:
            continue
        # one residual add per kernel: a group that already took an add cannot take another
        cands = [i for i in nd.inputs if i in tail_of and by_name[i].users == [nd.name]
                 and groups[tail_of[i]]["add"] is None]
        if not cands:
            continue
        tail = max(cands, key=index.__getitem__)  # the later one: its residual is ready by then
        g = groups[tail_of.pop(tail)]
        g["add"], g["residual"] = nd.name, next(i for i in nd.inputs if i != tail)
        g["tail"] = nd.name
        g["members"].append(nd.name)
        tail_of[nd.name] = g["head"]
    for g in groups.values():
        users = by_name[g["tail"]].users
        if len(users) == 1 and by_name[users[0]].kind in ("relu", "relu6"):
            g["act"] = by_name[users[0]].kind
            del tail_of[g["tail"]]
            g["tail"] = users[0]
            g["members"].append(users[0])
            tail_of[users[0]] = g["head"]
    return groups


def _key(name: str, used: set) -> str:
    key = re.sub(r"[^0-9A-Za-z_]", "_", name) or "layer"
    base, i = key, 1
    while key in used:
        i += 1
        key = f"{base}_{i}"
    used.add(key)
    return key


@torch.no_grad()
def convert(qmodel: nn.Module) -> IntModel:
    """Convert a fake-quant model (from ``naive_ptq`` / ``quantize_model``, block reconstruction or
    QAT) into an :class:`IntModel` on the CPU, in eval mode.

    Args:
        qmodel: a model whose convs / linears are ``QuantConv2d`` / ``QuantLinear`` with calibrated
            quantizers that implement the quantizer protocol (:mod:`zsq_engine.quant.protocol`:
            ``UniformQuantizer``, recon's ``LSQActQuantizer`` / ``AdaRoundWeightQuantizer``, the
            latter taken with HARD rounding), made of the layers listed in
            :data:`zsq_engine.runtime.graph.SUPPORTED`.
    Returns:
        ``IntModel``: ``forward(x float [N, C, H, W]) -> float output`` reproducing ``qmodel(x)``
        in eval mode. Move it with ``.to(device)``.
    Raises:
        TypeError: ``qmodel`` is not an nn.Module.
        UnsupportedLayerError (a ValueError): a layer or operation the runtime cannot execute,
            named with its qualified name and type; ValueError: uncalibrated / unsupported quantizers.
    """
    if not isinstance(qmodel, nn.Module):
        raise TypeError(f"qmodel must be an nn.Module, got {type(qmodel).__name__}")
    if not any(isinstance(m, QuantLayer) for m in qmodel.modules()):
        raise ValueError("qmodel has no quantized layer (QuantConv2d / QuantLinear): quantize it first, e.g. "
                         "with zsq_engine.quant.naive_ptq")
    was_training = qmodel.training
    qmodel.eval()
    try:
        nodes = trace_model(qmodel)
        return _lower(nodes)
    finally:
        qmodel.train(was_training)


def _lower(nodes: List[Node]) -> IntModel:
    by_name = {n.name: n for n in nodes}
    groups = _groups(nodes, by_name)
    member_of = {m: h for h, g in groups.items() for m in g["members"]}
    tails = {g["tail"]: h for h, g in groups.items()}
    input_q: Dict[str, Optional[ActQParams]] = {
        h: act_qparams(by_name[h].module.act_quantizer, by_name[h].target) for h in groups}

    # units: group tails and ungrouped nodes, in execution order
    units = [n for n in nodes if n.name not in member_of or n.name in tails]

    demands: Dict[str, List[Rep]] = {n.name: [] for n in nodes}

    def need(name: str, rep: Rep) -> None:
        if rep not in demands[name]:
            demands[name].append(rep)

    for u in reversed(units):
        if u.name in tails:
            g = groups[tails[u.name]]
            q = input_q[g["head"]]
            need(by_name[g["head"]].inputs[0], FLOAT if q is None else q)
            if g["residual"] is not None:
                need(g["residual"], FLOAT)
        elif u.kind == "maxpool" and FLOAT in demands[u.name]:
            need(u.inputs[0], FLOAT)  # pooled in float once, then quantized: 4x fewer values to quantize
        elif u.kind in _TRANSPARENT:
            for rep in demands[u.name]:
                need(u.inputs[0], rep)
        elif u.kind != "input":
            for i in u.inputs:
                need(i, FLOAT)

    slots: Dict[Tuple[str, int], str] = {}
    rep_ids: Dict[Rep, int] = {}

    def slot(name: str, rep: Rep) -> str:
        rid = rep_ids.setdefault(rep, len(rep_ids))
        return slots.setdefault((name, rid), f"{name}:{'f' if rep == FLOAT else 'q%d' % rid}")

    program: List[dict] = []
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    used_keys: set = set()
    output_slot = None

    def quantize_steps(name: str, reps: List[Rep]) -> None:
        for rep in reps:
            if rep != FLOAT:
                program.append({"op": "quantize", "in": slot(name, FLOAT), "out": slot(name, rep), "q": rep.to_dict()})

    for u in units:
        want = demands[u.name]
        if u.kind == "input":
            quantize_steps(u.name, want)
        elif u.kind == "output":
            output_slot = slot(u.inputs[0], FLOAT)
        elif u.name in tails:
            if not want:
                continue  # nothing uses it
            g = groups[tails[u.name]]
            head = by_name[g["head"]]
            out_q = want[0] if len(want) == 1 and want[0] != FLOAT else None
            kw = dict(output_q=out_q, activation=g["act"], residual="float" if g["residual"] else None)
            if head.kind == "qconv":
                mod = IntConv2d.from_quant(head.module, head.target,
                                           bn=by_name[g["bn"]].module if g["bn"] else None, **kw)
            else:
                mod = IntLinear.from_quant(head.module, head.target, **kw)
            key = _key(head.target, used_keys)
            layers[key] = mod
            q = input_q[head.name]
            program.append({"op": "conv" if head.kind == "qconv" else "linear", "layer": key,
                            "in": slot(head.inputs[0], FLOAT if q is None else q),
                            "residual": slot(g["residual"], FLOAT) if g["residual"] else None,
                            "out": slot(u.name, FLOAT if out_q is None else out_q)})
            if out_q is None:
                quantize_steps(u.name, want)
        elif u.kind == "maxpool" and FLOAT in want:
            program.append({"op": "maxpool", "in": slot(u.inputs[0], FLOAT), "out": slot(u.name, FLOAT), **u.attrs})
            quantize_steps(u.name, want)
        elif u.kind in _TRANSPARENT:
            for rep in want:
                if u.kind == "chclamp":
                    program.append(clamp_step(slot(u.inputs[0], rep), slot(u.name, rep), u.attrs["upper"], rep))
                    continue
                step = {"op": u.kind, "in": slot(u.inputs[0], rep), "out": slot(u.name, rep), **u.attrs}
                if u.kind == "pad":
                    step["value"] = 0 if rep == FLOAT else rep.zero_point  # Q(0) = zero point
                program.append(step)
        else:  # float operations: avgpool, add, relu, relu6
            if not want:
                continue
            program.append({"op": u.kind, "in": [slot(i, FLOAT) for i in u.inputs], "out": slot(u.name, FLOAT),
                            **u.attrs})
            quantize_steps(u.name, want)
    input_slot = slot(nodes[0].name, FLOAT)
    return IntModel(layers, program, input_slot, output_slot)
