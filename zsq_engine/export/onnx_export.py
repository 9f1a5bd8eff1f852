"""``to_onnx``: check arguments, lower, validate with ``onnx.checker``, write atomically."""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

__all__ = ["to_onnx", "DEFAULT_OPSET", "INT4_OPSET"]

DEFAULT_OPSET = 13  # per-axis QuantizeLinear / DequantizeLinear: the widest engine support
INT4_OPSET = 21     # the first opset with INT4 / UINT4 tensors


def _check_args(qmodel, example_input, int4_weights: bool, opset: Optional[int]) -> int:
    from ..quant.modules import QuantLayer

    if not isinstance(qmodel, nn.Module):
        raise TypeError(f"qmodel must be an nn.Module, got {type(qmodel).__name__}")
    if not any(isinstance(m, QuantLayer) for m in qmodel.modules()):
        raise ValueError("qmodel has no quantized layer (QuantConv2d / QuantLinear): quantize it first, e.g. with "
                         "zsq_engine.quant.naive_ptq")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4 \
            or not example_input.dtype.is_floating_point:
        got = (f"{tuple(example_input.shape)} {example_input.dtype}" if isinstance(example_input, torch.Tensor)
               else type(example_input).__name__)
        raise ValueError(f"example_input must be a float image tensor [N, C, H, W], got {got}")
    need = INT4_OPSET if int4_weights else DEFAULT_OPSET
    if opset is None:
        return need
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < need:
        raise ValueError(f"opset must be an int >= {need} ({'INT4 weights need opset 21' if int4_weights else 'per-axis QDQ needs opset 13'}), got {opset!r}")
    return opset


def to_onnx(qmodel: nn.Module, example_input: torch.Tensor, path, *, int4_weights: bool = False,
            opset: Optional[int] = None, float_bias: bool = False) -> dict:
    """Export a fake-quant model as a QDQ ONNX graph computing the same function.

    Args:
        qmodel: the fake-quant model (``naive_ptq`` / ``quantize_model``, ``zsq quantize``, ``zsq qat``);
            any layer the integer runtime supports (``zsq_engine.runtime.graph.SUPPORTED``).
        example_input: float ``[N, C, H, W]``; fixes C, H, W of the graph (the batch stays symbolic).
        path: the ``.onnx`` file; written through a temporary file in the same folder and renamed,
            so nothing is written when the export fails.
        int4_weights: store weights of at most 4 bits as INT4 initializers (opset 21); default
            False: int8 initializers holding the 4-bit codes (engines without INT4).
        opset: default 13 (21 with ``int4_weights``).
        float_bias: keep every bias in fp32 (the fake-quant model's exact function, for checking the
            graph); default False: int32 biases on the accumulator grid where an engine fuses the
            layer into an integer conv / GEMM (ONNX Runtime would round a float bias there itself).
    Returns:
        dict: ``path``, ``opset``, ``nodes``, ``quantize_pairs``, ``int4_weights``, ``layers``, ...
    Raises:
        UnsupportedLayerError (ValueError) naming a layer that cannot be exported; ValueError /
        TypeError for bad arguments; ImportError without the ``onnx`` package.
    """
    try:
        import onnx
    except ImportError as exc:  # optional dependency
        raise ImportError("zsq export needs the onnx package: pip install onnx (extra: zsq_engine[export])") from exc
    from .lower import lower_to_onnx

    opset = _check_args(qmodel, example_input, int4_weights, opset)
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path: folder {path.parent} does not exist")
    if any(t.device.type != "cpu" for t in list(qmodel.parameters()) + list(qmodel.buffers())):
        qmodel = copy.deepcopy(qmodel).cpu()  # the graph is built from CPU tensors; the caller's model stays put
    was_training = qmodel.training
    qmodel.eval()
    try:
        model, info = lower_to_onnx(qmodel, example_input.detach().cpu().float(), opset=opset,
                                    weight_container="int4" if int4_weights else "int8",
                                    float_bias=bool(float_bias))
    finally:
        qmodel.train(was_training)
    onnx.checker.check_model(model, full_check=True)
    if info["weight_zero_point_layers"]:
        names = info["weight_zero_point_layers"]
        warnings.warn(
            f"{len(names)} layer(s) keep per-channel weight zero points (8-bit asymmetric codes that span "
            f"more than int8 after folding; first: {names[0]!r}). The graph is exact, but ONNX Runtime's "
            "fused QLinearConv (graph optimisation level 'extended' and above) can compute such layers "
            "differently (measured on EfficientNet-Lite0: docs/export.md); quantize with "
            "symmetric_weights=True for a model that engines fuse correctly.", stacklevel=2)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        # mkstemp creates the file private (0600); give it the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"path": str(path), "opset": opset, "nodes": len(model.graph.node), **info}
