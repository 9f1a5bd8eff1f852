"""Integer parameters read out of a fake-quant layer: activation grids and integer weights.

The fake-quant model is the specification. Every quantizer is read through the quantizer
protocol (:mod:`zsq_engine.quant.protocol`): activation quantizers give one per-tensor grid per
quantized layer input, weight quantizers their grid and integer codes (an AdaRound quantizer its
HARD-rounded codes, whatever mode it is in).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..opspec.qparams import ActQParams
from ..quant.protocol import GridQuantizer, QuantizerNotReady, WeightGridQuantizer

__all__ = ["ActQParams", "act_qparams", "integer_weight"]


def _fp32(v: float) -> float:
    return float(torch.tensor(float(v), dtype=torch.float32))


def _not_ready(where: str, role: str, exc: QuantizerNotReady) -> ValueError:
    return ValueError(f"{where}: its {role} quantizer {exc.reason}" + (f"; {exc.hint}" if exc.hint else ""))


def act_qparams(quantizer: Optional[nn.Module], where: str) -> Optional[ActQParams]:
    """The grid of an input-activation quantizer, or None when the input stays float.

    ``where`` names the layer in errors. A disabled quantizer means float input (the fake-quant
    model passes the input through unchanged)."""
    if quantizer is None or not getattr(quantizer, "enabled", True):
        return None
    if not isinstance(quantizer, GridQuantizer):
        raise ValueError(f"{where}: activation quantizer of type {type(quantizer).__name__} is not supported "
                         "(expected a quantizer with integer_grid(): the zsq_engine.quant.GridQuantizer protocol)")
    try:
        grid = quantizer.integer_grid()
    except QuantizerNotReady as exc:
        raise _not_ready(where, "activation", exc) from None
    if grid.per_channel:
        raise ValueError(f"{where}: per-channel activation quantization is not supported by the integer "
                         "runtime (the kernels take one activation scale per tensor)")
    scale, zp = grid.scale, grid.zero_point
    if scale.numel() != 1:
        raise ValueError(f"{where}: activation quantizer has {scale.numel()} scales, expected one (per tensor)")
    return ActQParams(_fp32(scale.reshape(-1)[0].item()), int(zp.reshape(-1)[0].item()), int(grid.qmin),
                      int(grid.qmax))


@torch.no_grad()
def integer_weight(layer: nn.Module, where: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """``(codes int32 [O, ...], scale fp32 [O], zero_point int32 [O], qmin, qmax)`` of a QuantLayer.

    Per-tensor grids are broadcast to every output channel. Raises ValueError naming ``where``
    for float weights, per-channel grids on another axis, or codes that do not reproduce the
    fake-quantized weight."""
    wq = layer.weight_quantizer
    weight = layer.weight.detach()
    out_ch = weight.shape[0]
    if wq is None or not getattr(wq, "enabled", True):
        raise ValueError(f"{where}: its weights are not quantized (no enabled weight quantizer); the integer "
                         "runtime needs integer weights")
    if not isinstance(wq, WeightGridQuantizer):
        raise ValueError(f"{where}: weight quantizer of type {type(wq).__name__} is not supported (expected a "
                         "quantizer with integer_grid() and integer_codes(): zsq_engine.quant.WeightGridQuantizer)")
    try:
        grid = wq.integer_grid(weight.dim())
    except QuantizerNotReady as exc:
        raise _not_ready(where, "weight", exc) from None
    if grid.axis not in (None, 0):
        raise ValueError(f"{where}: per-channel weight grids must be along axis 0 (output channels), "
                         f"got axis {grid.axis}")
    try:
        codes = wq.integer_codes(weight)
    except QuantizerNotReady as exc:
        raise _not_ready(where, "weight", exc) from None
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    scale, zp = grid.scale.float().reshape(-1), grid.zero_point.float().reshape(-1)
    qmin, qmax = grid.qmin, grid.qmax
    if scale.numel() == 1:
        scale, zp = scale.expand(out_ch).clone(), zp.expand(out_ch).clone()
    if scale.numel() != out_ch:
        raise ValueError(f"{where}: weight quantizer has {scale.numel()} scales for {out_ch} output channels")
    return codes, scale.contiguous(), zp.to(torch.int32).contiguous(), int(qmin), int(qmax)
