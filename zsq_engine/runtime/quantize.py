"""Float <-> integer activation conversion at the few places the integer model needs it.

``quantize`` uses exactly the arithmetic of the fake-quant op (``zsq_engine.ops.fake_quant``:
``round_half_even(x * (1 / scale)) + zero_point`` in fp32, then clamp), so a value the
fake-quant model quantizes gets the same integer code here. It runs where a float value meets a
quantized layer input: the model input (when the first layer quantizes it) and the float carriers
described in ``docs/runtime.md`` (residual junctions, pooled features).
"""
from __future__ import annotations

import functools

import torch

from .qparams import ActQParams

__all__ = ["quantize", "dequantize", "nchw_to_nhwc", "nhwc_to_nchw"]


@functools.lru_cache(maxsize=4096)
def _fp32_reciprocal(scale: float) -> float:
    # 1/s rounded to fp32 once on the host: a python float multiplies an fp32 tensor in fp32, so
    # the product is the fake-quant op's, and no tensor is created per call (CUDA-graph safe)
    return float(torch.reciprocal(torch.tensor(scale, dtype=torch.float32)))


def quantize(x: torch.Tensor, q: ActQParams) -> torch.Tensor:
    """``clamp(round(x * (1/s)) + z, qmin, qmax)`` as ``q.dtype``; the shape and layout of ``x`` are kept."""
    codes = x.float().mul(_fp32_reciprocal(q.scale)).round_().add_(q.zero_point).clamp_(q.qmin, q.qmax)
    return codes.to(q.dtype)


def dequantize(x: torch.Tensor, q: ActQParams) -> torch.Tensor:
    """``(x - z) * s`` in fp32."""
    return (x.float() - q.zero_point) * q.scale


def nchw_to_nhwc(x: torch.Tensor) -> torch.Tensor:
    """A contiguous NHWC copy (no copy when ``x`` is already channels_last)."""
    return x.permute(0, 2, 3, 1).contiguous()


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """The logical NCHW view of an NHWC tensor (channels_last memory, no copy)."""
    return x.permute(0, 3, 1, 2)
