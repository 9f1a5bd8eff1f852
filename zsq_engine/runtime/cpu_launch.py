"""Direct launches of the C++ CPU integer kernels for :class:`IntConv2d` / :class:`IntLinear`.

Why: the public ops (``zsq_engine.ops.qconv2d_nhwc`` / ``qgemm``) validate every argument,
dispatch, look the packed weight up in a cache and convert the epilogue on every call; measured
here that is ~90 us per call, as much as the kernel itself for a batch-1 layer of the
Fashion-MNIST ResNet. An integer layer's weight and epilogue never change between calls, so it
packs the weight panels and converts the epilogue ONCE (:func:`make_launch`) and then calls the
launcher (the ``_C.int_*_cpu`` function, whose C++ boundary still checks shapes and dtypes)
with only the activation and the residual changing. STYLE.md: "inference code calls the
launcher directly".

Only used when dispatch would pick the ``cpu`` backend for this op anyway (nothing forced, or
``cpu`` forced); a forced ``reference`` / ``triton`` backend, or a model without the built
extension, goes through the public op unchanged.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..ops import dispatch as _dispatch
from ..ops.epilogue import Epilogue

__all__ = ["cpu_kernels_selected", "make_launch"]

_RESIDUAL_ARG = 6  # position of the residual among the 14 epilogue arguments (cpu_int.epilogue_args)
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


def _with_residual(args: list, residual: Optional[torch.Tensor]) -> list:
    """The epilogue arguments with this call's residual in place (the rest never change)."""
    if residual is None:
        return args
    args = list(args)
    args[_RESIDUAL_ARG] = residual
    return args


def _cpu_int():
    from ..ops.backends import cpu_int

    return cpu_int


def make_launch(kind: str, w: torch.Tensor, epilogue: Optional[Epilogue], *, stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), groups: int = 1, pad_value: int = 0, w_packed: bool = False,
                k: Optional[int] = None) -> Optional[Callable]:
    """A function ``launch(x, residual=None) -> out`` running one conv (``kind='conv'``: ``x``
    NHWC codes, ``w`` int8 OHWI) or linear (``kind='linear'``: ``x`` [M, K] codes, ``w`` int8
    [N, K] or packed int4 with ``w_packed``) with the weight packed now; None when the C++
    kernels are not built. ``residual`` is the NHWC / [M, N] tensor the epilogue adds. Callers
    check :func:`cpu_kernels_selected` before each call."""
    op = "qconv2d_nhwc" if kind == "conv" else "qgemm"
    # built whenever the C++ kernels exist (whether they are used is decided per call, so a model
    # converted inside use_backend("reference") still gets them afterwards)
    if w.device.type != "cpu" or "cpu" not in _dispatch.implementations(op) or not _dispatch.backend_status("cpu")[0]:
        return None
    cpu_int = _cpu_int()
    C = cpu_int._C
    args = list(cpu_int.epilogue_args(epilogue))
    if kind == "linear":
        packed = cpu_int.pack_weight(w, w_packed=w_packed, k=k)
        panels, colsum, n, kk = packed.panels, packed.colsum, packed.n, packed.k

        def launch_linear(x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
            a = _with_residual(args, residual)
            return C.int_gemm_cpu(x, 0 if x.dtype == torch.int8 else 1, kk, panels, colsum, n, *a,
                                  isa=cpu_int.isa_code())
        return launch_linear

    o, kh, kw, cg = w.shape
    geometry = (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    if groups == o and cg == 1:  # depthwise (the conv kernel's own test: groups == C == O)
        w_dw = w.contiguous()

        def launch_depthwise(x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
            a = _with_residual(args, residual)
            return C.int_depthwise_conv2d_nhwc_cpu(x, w_dw, *geometry, pad_value, *a)
        return launch_depthwise

    packed = cpu_int.pack_weight(w, groups=groups)
    panels, colsum = packed.panels, packed.colsum

    def launch_conv(x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        a = _with_residual(args, residual)
        return C.int_conv2d_nhwc_cpu(x, panels, colsum, o, kh, kw, *geometry, groups, pad_value, *a,
                                     isa=cpu_int.isa_code())
    return launch_conv
