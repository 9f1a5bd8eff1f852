"""Prepared C++ CPU integer calls for :class:`IntConv2d` / :class:`IntLinear` (docs/runtime.md,
"Integer layers and execution").

A layer's weight and epilogue never change between calls, so it prepares the call once
(:func:`zsq_engine.ops.int_conv.cpu.prepare_conv` / :func:`zsq_engine.ops.int_gemm.cpu.prepare_linear`: weight packed,
epilogue bound) and then passes only the activation and the residual. Used only when dispatch
would pick the ``cpu`` backend for the op anyway (nothing forced, or ``cpu`` forced); a forced
``reference`` / ``triton`` backend, or a model without the built extension, goes through the
public op unchanged.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..ops import dispatch as _dispatch
from ..opspec.epilogue import Epilogue

__all__ = ["cpu_kernels_selected", "make_launch"]

_selected_cache: dict = {}


def cpu_kernels_selected(op: str) -> bool:
    """Whether dispatch sends CPU tensors of ``op`` to the C++ ``cpu`` backend right now."""
    forced = _dispatch.forced_backend()
    key = (op, forced)
    hit = _selected_cache.get(key)
    if hit is None:
        try:
            hit = _dispatch.select(op, torch.device("cpu"))[0] == "cpu"
        except _dispatch.BackendUnavailableError:
            hit = False  # the public op raises the clear error itself
        _selected_cache[key] = hit
    return hit


def make_launch(kind: str, w: torch.Tensor, epilogue: Optional[Epilogue], *, stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), groups: int = 1, pad_value: int = 0, w_packed: bool = False,
                k: Optional[int] = None, residual_dtype: Optional[torch.dtype] = None, codes=None) -> Optional[Callable]:
    """The prepared call ``launch(x, residual=None) -> out`` of one conv (``kind='conv'``: ``x``
    NHWC codes, ``w`` int8 OHWI) or linear (``kind='linear'``: ``x`` [M, K] codes, ``w`` int8
    [N, K] or packed int4 with ``w_packed``); None when the C++ kernels are not built. Callers
    check :func:`cpu_kernels_selected` before each call. ``codes``: an :class:`ActQParams` for a
    second output (the fp32 output's codes)."""
    op = "qconv2d_nhwc" if kind == "conv" else "qgemm"
    # built whenever the C++ kernels exist (whether they are used is decided per call, so a model
    # converted inside use_backend("reference") still gets them afterwards)
    if w.device.type != "cpu" or "cpu" not in _dispatch.implementations(op) or not _dispatch.backend_status("cpu")[0]:
        return None
    if kind == "linear":
        from ..ops.int_gemm.cpu import prepare_linear

        return prepare_linear(w, epilogue, w_packed=w_packed, k=k, residual_dtype=residual_dtype, codes=codes)
    from ..ops.int_conv.cpu import prepare_conv

    return prepare_conv(w, epilogue, stride=stride, padding=padding, dilation=dilation, groups=groups,
                        pad_value=pad_value, residual_dtype=residual_dtype, codes=codes)
