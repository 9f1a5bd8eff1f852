"""ONNX Runtime (CPU provider) around an exported file: run it, list the operators of the graph it
optimised (which QDQ pairs it fused into integer operators), and time it for ``zsq bench``."""
from __future__ import annotations

import collections
import os
import tempfile
from typing import Dict, Optional

import numpy as np
import torch

__all__ = ["session", "run", "optimized_op_counts", "INTEGER_OPS", "onnxruntime_contender"]

# operators that compute on integer codes (ONNX and ONNX Runtime's com.microsoft domain)
INTEGER_OPS = ("QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm", "QLinearAdd",
               "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearMul", "QLinearConcat",
               "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearLeakyRelu", "QLinearSigmoid",
               "NhwcQLinearConv", "QLinearReduceMean")


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError("this needs onnxruntime: pip install onnxruntime (extra: zsq_engine[export])") from exc
    return onnxruntime


def session(path, threads: Optional[int] = None, optimized_path: Optional[str] = None):
    """An ``InferenceSession`` on the CPU provider with all graph optimisations; ``optimized_path``
    saves the graph ONNX Runtime actually runs."""
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def run(sess, x: torch.Tensor) -> torch.Tensor:
    """The session's float output for float NCHW ``x``."""
    name = sess.get_inputs()[0].name
    return torch.from_numpy(sess.run(None, {name: x.detach().cpu().float().numpy()})[0])


def optimized_op_counts(path) -> Dict[str, int]:
    """``{op_type: count}`` of the graph ONNX Runtime builds from ``path`` after its optimisations."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        session(path, threads=1, optimized_path=out)
        model = onnx.load(out)
    return dict(collections.Counter(n.op_type for n in model.graph.node))


def onnxruntime_contender(qmodel, input_shape, threads: Optional[int] = None):
    """A ``zsq bench`` contender: ``qmodel`` exported to ONNX (in a temporary folder) and run by
    ONNX Runtime's CPU provider with ``threads`` intra-op threads (default: torch's count)."""
    from ..runtime.latency import Contender
    from .onnx_export import to_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        to_onnx(qmodel, torch.zeros(1, *input_shape), path)
        sess = session(path, threads=threads or torch.get_num_threads())
    name = sess.get_inputs()[0].name

    def fn(x: np.ndarray, sess=sess, name=name):
        return sess.run(None, {name: x})[0]

    return Contender("onnxruntime", "qdq", fn, lambda x: np.ascontiguousarray(x.detach().cpu().float().numpy()))
