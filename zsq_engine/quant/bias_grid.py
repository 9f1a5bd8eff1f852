"""Biases on the int32 accumulator grid: the last step of a quantized model.

An integer engine computes a quantized-input layer as ``s_x * s_w[o] * (sum of code products +
bias code)``: it can only add a bias that lies on the grid ``s_x * s_w[o]`` (one int32 step of
the accumulator). ONNX Runtime and TensorRT round a float bias onto that grid when they fuse a
``DQ -> Conv -> Q`` pattern, so a fake-quant model with an arbitrary float bias is a function no
integer engine computes; the round-off flips the odd requantized code (docs/export.md measures
it). :func:`snap_biases` makes the fake-quant model itself keep every such bias on its grid, as
integer engines do, so the fake-quant model, the zsq integer runtime and a QDQ engine compute
the same function. The move is at most half an accumulator step per channel.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

__all__ = ["snap_biases", "accumulator_scale"]


def accumulator_scale(layer: nn.Module, name: str):
    """The fp32 grid ``s_x * s_w[o]`` ([O]) of a quantized layer's bias, or None when the layer's
    input or weight is float, or its grids are not ones the integer runtime reads (no integer
    accumulator)."""
    # the integer runtime's own readers: the same scales it (and the ONNX export) will use
    from ..runtime.qparams import act_qparams, integer_weight

    if layer.act_quantizer is None or layer.weight_quantizer is None:
        return None
    try:
        act = act_qparams(layer.act_quantizer, name)
        if act is None or not getattr(layer.weight_quantizer, "enabled", True):
            return None
        _, w_scale, _, _, _ = integer_weight(layer, name)
    except ValueError:
        # a grid no integer engine runs (uncalibrated: a branch calibration never reached,
        # per-channel activations, ...): there is no accumulator, the bias stays float
        return None
    return torch.tensor(act.scale, dtype=torch.float32) * w_scale.float()


INT32_MAX = 2 ** 31 - 1


def _live_channels(layer: nn.Module, out_ch: int) -> torch.Tensor:
    """Output channels with at least one non-zero weight code, on the bias's device."""
    return layer.quantized_weight().reshape(out_ch, -1).ne(0).any(1).to(layer.bias.device)


@torch.no_grad()
def snap_biases(qmodel: nn.Module) -> List[str]:
    """Round the bias of every quantized-input layer of ``qmodel`` onto its accumulator grid
    ``s_x * s_w[o]`` (in place); returns the names of the layers changed.

    Call it once the grids are final (after activation calibration / reconstruction / training):
    a later change of a scale moves the grid. A layer with float input, float weights or no bias
    is left as it is; so is a BatchNorm left after a conv (``fold_bn=False``), whose folded bias
    lands on another grid. A channel whose weight codes are all zero has no accumulator to add
    to and keeps its float bias.

    A channel whose bias is more than int32 steps of its grid (a near-dead channel of a folded
    BatchNorm: weights ~1e-8, scale ~1e-9, bias ~1) cannot be added by any int32 accumulator.
    Its code products are then below ``K * 2^-16`` of its bias (8-bit codes: ``|w| <= 127``,
    ``x <= 255``; K inputs per output), so its weights are set to zero: the channel becomes the constant it already nearly is, dead, and
    keeps its float bias - the same function in the fake-quant model, the integer runtime and a
    QDQ export."""
    from .model import quant_layers

    changed = []
    for name, layer in quant_layers(qmodel):
        if layer.bias is None:
            continue
        acc = accumulator_scale(layer, name)
        if acc is None:
            continue
        acc = acc.to(layer.bias.device)
        # fp64 division: the nearest grid point of the fp32 bias, ties as torch.round (half to even)
        steps = torch.round(layer.bias.detach().double() / acc.double())
        live = _live_channels(layer, acc.numel())
        unreachable = live & (steps.abs() > INT32_MAX)
        if bool(unreachable.any()):
            layer.weight[unreachable.to(layer.weight.device)] = 0
            live = _live_channels(layer, acc.numel())
        snapped = torch.where(live, (steps * acc.double()).to(layer.bias.dtype), layer.bias)
        layer.bias.copy_(snapped)
        changed.append(name)
    return changed
