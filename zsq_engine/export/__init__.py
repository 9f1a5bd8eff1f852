"""Export of fake-quant models to standard formats: ONNX as a QDQ graph (``to_onnx``).

ONNX Runtime helpers (run, optimised-graph inspection, latency) live in
:mod:`zsq_engine.export.ort`. See docs/export.md.
"""
from ..runtime.graph import UnsupportedLayerError
from .onnx_export import DEFAULT_OPSET, INT4_OPSET, to_onnx

__all__ = ["to_onnx", "UnsupportedLayerError", "DEFAULT_OPSET", "INT4_OPSET"]
