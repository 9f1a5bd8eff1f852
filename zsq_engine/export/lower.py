"""Lower a fake-quant model to a QDQ ONNX graph (``onnx.ModelProto``).

The model is traced into canonical nodes by the integer runtime's tracer
(:func:`zsq_engine.runtime.graph.trace_model`, which also names unsupported layers) and each node
is emitted as the standard ONNX operators that compute the same function in float:

* a quantized layer's input: ``QuantizeLinear -> DequantizeLinear`` with that layer's own grid
  (per tensor, uint8 / int8 zero point as quantized), one pair per (value, grid) shared by every
  consumer with that grid; a grid narrower than its 8-bit container (4-bit activations) clamps
  the CODES between the pair (``Clip`` on uint8 / int8) and is then re-quantized on a grid 2^k
  times finer (exact), which makes the consumer's int32 bias grid finer;
* its weight: int8 (or, on request, INT4) per-output-channel codes -> ``DequantizeLinear(axis=0)``,
  BatchNorm folded in (:mod:`zsq_engine.export.weights`); conv -> ``Conv``, linear ->
  ``Gemm(transB=1)``; an int32 bias through ``DequantizeLinear`` where engines fuse the layer
  into an integer kernel (its output is read only through quantizers), else the exact fp32 bias;
* ReLU -> ``Relu``, ReLU6 -> ``Clip(0, 6)``, left out before a quantizer whose clamp does the same;
  add -> ``Add`` (float, as the fake-quant model adds); pools -> ``MaxPool`` / ``AveragePool`` /
  ``GlobalAveragePool``; flatten -> ``Flatten``; zero padding right before convs is folded into
  their pads (``DQ(Q(0)) == 0``).

Everything the fake-quant model keeps in float (the first layer's input by default, residual
operands, pooling inputs, the logits) stays float in the graph. docs/export.md says why.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..runtime.graph import Node, UnsupportedLayerError, trace_model
from ..runtime.qparams import ActQParams, act_qparams
from .builder import GraphBuilder
from .weights import export_weight, quantize_bias

__all__ = ["lower_to_onnx"]


def _example_shapes(qmodel: nn.Module, example: torch.Tensor):
    """(input (H, W) of every SamePad2d module (its pads depend on it), output shape) for the example."""
    from ..models.efficientnet_lite import SamePad2d

    shapes, handles = {}, []
    for name, m in qmodel.named_modules():
        if isinstance(m, SamePad2d):
            handles.append(m.register_forward_pre_hook(
                lambda mod, args, name=name: shapes.__setitem__(name, tuple(args[0].shape[-2:]))))
    try:
        with torch.no_grad():
            out = qmodel(example)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor):
        raise UnsupportedLayerError(f"the model returns {type(out).__name__}; the export supports one output tensor")
    return shapes, list(out.shape)


class _Lowering:
    def __init__(self, nodes: List[Node], same_shapes: Dict[str, Tuple[int, int]], weight_container: str,
                 float_bias: bool) -> None:
        self.float_bias = float_bias
        self.nodes = nodes
        self.by_name = {n.name: n for n in nodes}
        self.same_shapes = same_shapes
        self.container = weight_container
        self.b = GraphBuilder()
        self.value: Dict[str, str] = {}  # node name -> ONNX float tensor
        self.qdq: Dict[Tuple[str, ActQParams], str] = {}
        self.qdq_scale: Dict[Tuple[str, ActQParams], float] = {}
        self.codes_of: Dict[Tuple[str, ActQParams], str] = {}  # the integer codes tensor of each pair
        self.input_codes: Dict[str, str] = {}  # quantized layer -> codes tensor of its input
        self.int_bias_layers: List[str] = []
        self.weight_zero_point_layers: List[str] = []  # channels that keep a weight zero point
        self.folded_pads: Dict[str, Tuple[str, List[int]]] = {}  # pad node -> (input node, [t, l, b, r])
        self.int4_weights = 0

    # -- helpers -------------------------------------------------------------------------------
    def pads_of(self, nd: Node) -> List[int]:
        """[top, left, bottom, right] of a pad node."""
        if "pads" in nd.attrs:
            left, right, top, bottom = nd.attrs["pads"]
        else:
            k, s = nd.attrs["same"]
            h, w = self.same_shapes[nd.target]
            top, bottom = _same(h, k, s)
            left, right = _same(w, k, s)
        if min(top, left, bottom, right) < 0:
            raise UnsupportedLayerError(f"layer {nd.target!r}: negative padding (cropping) is not exported")
        return [int(top), int(left), int(bottom), int(right)]

    def requantized_directly(self, nd: Node) -> bool:
        """Whether a conv's output (after its BN and one ReLU / ReLU6) is read ONLY through the input
        quantizers of quantized layers: the pattern engines fuse into one integer conv, which adds
        the bias in int32 (ONNX Runtime quantizes a float bias there itself)."""
        out = nd
        if len(out.users) == 1 and self.by_name[out.users[0]].kind == "bn":
            out = self.by_name[out.users[0]]
        if len(out.users) == 1 and self.by_name[out.users[0]].kind in ("relu", "relu6"):
            out = self.by_name[out.users[0]]
        readers = []
        for u in (self.by_name[u] for u in out.users):
            readers += [self.by_name[v] for v in u.users] if u.kind == "pad" else [u]
        return bool(readers) and all(r.kind in ("qconv", "qlinear")
                                     and act_qparams(r.module.act_quantizer, r.target) is not None for r in readers)

    def quantized(self, name: str, q: ActQParams) -> str:
        """The DequantizeLinear output holding value ``name`` on grid ``q`` (emitted once)."""
        key = (name, q)
        if key in self.qdq:
            return self.qdq[key]
        nd = self.by_name[name]
        if nd.kind in ("relu", "relu6") and _clamp_redundant(nd.kind, q):
            # the grid's own clamping already does what the activation does: quantize its input, so
            # the conv before it meets the QuantizeLinear directly (the pattern engines fuse)
            out = self.quantized(nd.inputs[0], q)
            for d in (self.qdq, self.qdq_scale, self.codes_of):
                d[key] = d[(nd.inputs[0], q)]
            return out
        signed = q.qmin < 0
        dtype = np.int8 if signed else np.uint8
        lo, hi = (-128, 127) if signed else (0, 255)
        if not (lo <= q.qmin <= q.zero_point <= q.qmax <= hi):
            raise ValueError(f"activation grid {q.short()} of {name!r} does not fit an 8-bit container")
        base = name
        scale = self.b.const(base + "_scale", np.array(q.scale, dtype=np.float32))
        zp = self.b.const(base + "_zero_point", np.array(q.zero_point, dtype=dtype))
        codes = self.b.node("QuantizeLinear", [self.value[name], scale, zp], base + "_q")
        if (q.qmin, q.qmax) != (lo, hi):
            # a narrower grid (e.g. 4-bit): QuantizeLinear saturates to the container only
            codes = self.b.node("Clip", [codes, self.b.const(base + "_qmin", np.array(q.qmin, dtype=dtype)),
                                         self.b.const(base + "_qmax", np.array(q.qmax, dtype=dtype))], base + "_qclip")
        self.codes_of[key] = codes
        out = self.b.node("DequantizeLinear", [codes, scale, zp], base + "_dq")
        # a narrow grid's codes, re-quantized on a grid 2^k times finer (exact: every value
        # (c - z) * s lies on it): the consumer's int32 bias grid becomes 2^k times finer too
        k = 1
        while 2 * k * q.qmax <= hi and 2 * k * q.qmin >= lo and 2 * k * abs(q.zero_point) <= max(hi, -lo):
            k *= 2
        if k > 1:
            fscale = self.b.const(base + "_fine_scale", np.array(q.scale / k, dtype=np.float32))
            fzp = self.b.const(base + "_fine_zero_point", np.array(q.zero_point * k, dtype=dtype))
            out = self.b.node("QuantizeLinear", [out, fscale, fzp], base + "_fq")
            out = self.b.node("DequantizeLinear", [out, fscale, fzp], base + "_fdq")
        self.qdq[key] = out
        self.qdq_scale[key] = float(np.float32(q.scale / k))
        return out

    def weight_dq(self, base: str, w) -> str:
        if w.container == "int4" and w.bits <= 4:
            self.int4_weights += 1
            codes = self.b.const_4bit(base + "_w", w.codes, "int4")
            zp = self.b.const_4bit(base + "_w_zero_point", w.zero_point, "int4")
        else:
            codes = self.b.const(base + "_w", w.codes.astype(np.int8))
            zp = self.b.const(base + "_w_zero_point", w.zero_point.astype(np.int8))
        scale = self.b.const(base + "_w_scale", w.scale)
        return self.b.node("DequantizeLinear", [codes, scale, zp], base + "_w_dq", axis=0)

    def bias_input(self, base: str, w, q: Optional[ActQParams], x_scale: float, int_bias: bool,
                   where: str) -> List[str]:
        if w.bias is None:
            return []
        if q is None or not int_bias:
            # float input, or a conv whose output no engine requantizes directly: the exact float bias
            return [self.b.const(base + "_bias", w.bias.astype(np.float32))]
        codes, acc_scale = quantize_bias(w.bias, x_scale, w.scale, where)
        return [self.b.node("DequantizeLinear", [self.b.const(base + "_bias_q", codes),
                                                 self.b.const(base + "_bias_scale", acc_scale),
                                                 self.b.const(base + "_bias_zero_point",
                                                              np.zeros_like(codes))], base + "_bias_dq", axis=0)]

    # -- emission ------------------------------------------------------------------------------
    def layer(self, nd: Node) -> None:
        m = nd.module
        where = f"layer {nd.target!r} ({type(m).__name__})"
        q = act_qparams(m.act_quantizer, nd.target)
        src = nd.inputs[0]
        extra = [0, 0, 0, 0]
        if src in self.folded_pads:
            src, extra = self.folded_pads[src]
        x = self.value[src] if q is None else self.quantized(src, q)
        bn = None
        if nd.kind == "qconv" and len(nd.users) == 1 and self.by_name[nd.users[0]].kind == "bn":
            bn = self.by_name[nd.users[0]].module
        container = self.container if (m.weight_bits or 8) <= 4 else "int8"
        int_bias = not self.float_bias and (nd.kind == "qlinear" or self.requantized_directly(nd))
        x_scale = self.qdq_scale.get((src, q), 0.0)
        w = export_weight(m, where, bn, container, input_scale=x_scale if q is not None and int_bias else None)
        base = nd.target or nd.name
        if bool(np.any(w.zero_point != 0)):
            self.weight_zero_point_layers.append(nd.target)
        wq = self.weight_dq(base, w)
        bias = self.bias_input(base, w, q, x_scale, int_bias, where)
        if q is not None:
            self.input_codes[nd.target] = self.codes_of[(src, q)]
            if int_bias:
                self.int_bias_layers.append(nd.target)
        if nd.kind == "qconv":
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise UnsupportedLayerError(f"{where}: padding_mode={m.padding_mode!r} / padding={m.padding!r} is "
                                            "not exported (only explicit zero padding)")
            ph, pw = m.padding
            pads = [ph + extra[0], pw + extra[1], ph + extra[2], pw + extra[3]]
            out = self.b.node("Conv", [x, wq] + bias, base + "_out", kernel_shape=list(m.kernel_size),
                              strides=list(m.stride), pads=pads, dilations=list(m.dilation), group=m.groups)
        else:
            out = self.b.node("Gemm", [x, wq] + bias, base + "_out", transB=1)
        self.value[nd.name] = out
        if bn is not None:
            self.value[nd.users[0]] = out

    def node(self, nd: Node) -> None:
        b, a = self.b, nd.attrs
        if nd.kind in ("qconv", "qlinear"):
            return self.layer(nd)
        if nd.kind == "bn":
            if nd.name not in self.value:
                raise UnsupportedLayerError(
                    f"layer {nd.target!r} (BatchNorm2d) does not directly follow a quantized conv whose only "
                    "consumer it is, so it cannot be folded; fold it before quantizing (zsq_engine.quant.fold_model_bn)")
            return None
        if nd.kind == "pad":
            pads = self.pads_of(nd)
            users = [self.by_name[u] for u in nd.users]
            if users and all(u.kind == "qconv" and u.module.padding_mode == "zeros"
                             and not isinstance(u.module.padding, str) for u in users) \
                    and nd.inputs[0] not in self.folded_pads:
                self.folded_pads[nd.name] = (nd.inputs[0], pads)
                return None
            t, l, bo, r = pads
            pad = b.const(nd.name + "_pads", np.array([0, 0, t, l, 0, 0, bo, r], dtype=np.int64))
            self.value[nd.name] = b.node("Pad", [self.value[nd.inputs[0]], pad], nd.name)
            return None
        ins = [self.value[i] for i in nd.inputs]
        if nd.kind == "relu":
            out = b.node("Relu", ins, nd.name)
        elif nd.kind == "relu6":
            out = b.node("Clip", ins + [b.const("zero", np.array(0.0, np.float32)),
                                        b.const("six", np.array(6.0, np.float32))], nd.name)
        elif nd.kind == "add":
            out = b.node("Add", ins, nd.name)
        elif nd.kind == "flatten":
            out = b.node("Flatten", ins, nd.name, axis=1)
        elif nd.kind == "maxpool":
            ph, pw = a["padding"]
            out = b.node("MaxPool", ins, nd.name, kernel_shape=a["kernel_size"], strides=a["stride"],
                         pads=[ph, pw, ph, pw], dilations=a["dilation"], ceil_mode=int(a["ceil_mode"]))
        elif nd.kind == "avgpool" and a["global"]:
            out = b.node("GlobalAveragePool", ins, nd.name)
        elif nd.kind == "avgpool":
            ph, pw = a["padding"]
            out = b.node("AveragePool", ins, nd.name, kernel_shape=a["kernel_size"], strides=a["stride"],
                         pads=[ph, pw, ph, pw], ceil_mode=int(a["ceil_mode"]),
                         count_include_pad=int(a["count_include_pad"]))
        else:
            raise UnsupportedLayerError(f"node {nd.name!r} of kind {nd.kind!r} has no ONNX export")
        self.value[nd.name] = out
        return None


def _clamp_redundant(kind: str, q: ActQParams) -> bool:
    """Whether ``Q(act(x)) == Q(x)`` for every x: ReLU when the zero point is the lowest code
    (negative values clamp to it, as 0 does); ReLU6 also needs 6 to round to the top code (or above) in any rounding
    order, a margin of 1e-3 step from the tie)."""
    if q.zero_point != q.qmin:
        return False
    return kind == "relu" or 6.0 / q.scale + q.zero_point >= q.qmax - 0.5 + 1e-3


def _same(size: int, k: int, s: int) -> Tuple[int, int]:
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def lower_to_onnx(qmodel: nn.Module, example_input: torch.Tensor, *, opset: int, weight_container: str,
                  float_bias: bool = False, input_name: str = "input", output_name: str = "logits"):
    """``(onnx.ModelProto, info)`` for an eval-mode fake-quant model; ``info`` counts what was emitted.

    The graph's input is ``[N, C, H, W]`` float with a symbolic batch ``N`` and the example's
    C, H, W (EfficientNet's "SAME" padding depends on H, W)."""
    nodes = trace_model(qmodel)
    same_shapes, out_shape = _example_shapes(qmodel, example_input)
    low = _Lowering(nodes, same_shapes, weight_container, float_bias)
    low.b.name(input_name)  # reserved: no emitted tensor may take the graph input's name
    low.value[nodes[0].name] = input_name
    out_name = None
    for nd in nodes[1:]:
        if nd.kind == "output":
            out_name = low.value[nd.inputs[0]]
            continue
        low.node(nd)
    if out_name is None or out_name == input_name:
        raise UnsupportedLayerError("the model's output is its input; nothing to export")
    output_name = low.b.node("Identity", [out_name], output_name)
    low.b.prune([output_name])
    shape = ["N"] + list(example_input.shape[1:])
    model = low.b.model(input_name, shape, output_name, ["N"] + out_shape[1:], opset,
                        doc="zsq_engine fake-quant model as a QDQ graph (zsq_engine.export.to_onnx)")
    info = {"quantize_pairs": len(set(low.qdq.values())), "int4_weights": low.int4_weights,
            "int_bias_layers": low.int_bias_layers, "input_codes": low.input_codes,
            "weight_zero_point_layers": low.weight_zero_point_layers,
            "layers": sum(1 for n in nodes if n.kind in ("qconv", "qlinear")),
            "folded_bn": sum(1 for n in nodes if n.kind == "bn"), "folded_pads": len(low.folded_pads)}
    return model, info
