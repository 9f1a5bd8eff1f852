"""A small ONNX graph builder: unique names, initializers from tensors, nodes in emission order.

It holds no knowledge of quantization; :mod:`zsq_engine.export.lower` decides what to emit.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["GraphBuilder"]

_INT4 = {"int4": TensorProto.INT4, "uint4": TensorProto.UINT4}


class GraphBuilder:
    """Collects nodes and initializers of one ONNX graph."""

    def __init__(self) -> None:
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self._names: Dict[str, int] = {}

    def name(self, base: str) -> str:
        """A tensor / node name not used before, derived from ``base``."""
        base = base.replace(".", "_").replace(":", "_") or "t"
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def const(self, base: str, array: np.ndarray) -> str:
        """An initializer holding ``array`` (its numpy dtype becomes the ONNX element type)."""
        name = self.name(base)
        # np.array, not np.ascontiguousarray: the latter turns a scalar (per-tensor grid) into shape [1]
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def const_4bit(self, base: str, codes: np.ndarray, kind: str) -> str:
        """An INT4 / UINT4 initializer (opset 21) holding integer ``codes`` (packed two per byte by onnx)."""
        name = self.name(base)
        self.initializers.append(helper.make_tensor(name, _INT4[kind], list(codes.shape),
                                                    codes.astype(np.int32).reshape(-1).tolist()))
        return name

    def node(self, op: str, inputs: Sequence[str], base: str, *, outputs: int = 1, domain: Optional[str] = None,
             **attrs) -> str:
        """Append a node; returns its (first) output name."""
        outs = [self.name(base) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.name("n_" + base), domain=domain,
                                           **attrs))
        return outs[0]

    def prune(self, outputs: Sequence[str]) -> int:
        """Drop nodes and initializers nothing reads (e.g. a ReLU whose only reader now quantizes
        its input); returns how many nodes went."""
        needed, kept = set(outputs), []
        for n in reversed(self.nodes):
            if any(o in needed for o in n.output):
                kept.append(n)
                needed.update(n.input)
        dropped = len(self.nodes) - len(kept)
        self.nodes = kept[::-1]
        self.initializers = [t for t in self.initializers if t.name in needed]
        return dropped

    def model(self, input_name: str, input_shape: Sequence, output_name: str, output_shape: Sequence, opset: int,
              doc: str = "") -> onnx.ModelProto:
        """The finished model: one float input and one float output (shapes: str entries symbolic)."""
        graph = helper.make_graph(
            self.nodes, "zsq_qdq",
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
            [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(output_shape))],
            initializer=self.initializers, doc_string=doc)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="zsq_engine")
        # the IR version the opset needs, not the newest onnx knows: older runtimes refuse newer IRs
        model.ir_version = 10 if opset >= 21 else 7
        return model
