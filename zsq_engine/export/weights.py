"""Integer weights and biases of one quantized layer in the form a QDQ graph stores them.

The fake-quant weight is ``w_hat[o] = (q[o] - z[o]) * s[o]``; a following BatchNorm multiplies
channel ``o`` by ``f[o]`` and adds a shift. Folding keeps the integer codes and moves ``|f|`` into
the scale (computed in fp64, rounded once, as the integer runtime does) and the sign of ``f``
into the codes, so every exported scale is positive (TensorRT requires it). The zero point is
folded into the codes (``d = sign * (q - z)``, zero point 0: the symmetric form every engine
fuses) in every channel where ``d`` fits the container; other channels keep their zero point.
Folded codes of a narrow grid (e.g. 4-bit) are then spread over the container by a power of two
per channel (``d * 2^k`` with scale ``s / 2^k``: the same weights exactly), which makes the int32
bias grid below ``2^k`` times finer.

A quantized-input layer's bias becomes int32 on the accumulator grid ``s_x * s_w[o]`` (what the
QDQ fusions of ONNX Runtime and TensorRT require); rounding moves it by at most half an
accumulator step, and not at all for a model whose biases already lie on that grid (naive PTQ's
``quant.snap_biases``). A float-input layer (the float first-layer policy) keeps an fp32 bias.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..runtime.qparams import integer_weight

__all__ = ["ExportedWeight", "export_weight", "quantize_bias", "CONTAINERS"]

INT32_MAX = 2 ** 31 - 1

# container -> (lowest, highest) code
CONTAINERS = {"int8": (-128, 127), "int4": (-8, 7)}


@dataclass
class ExportedWeight:
    """``codes`` int [O, ...] in the container's range, ``scale`` fp32 [O] (> 0), ``zero_point``
    int [O] (all 0 when folded), ``bias`` fp64 [O] or None, ``bits`` of the model's grid."""

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bias: Optional[np.ndarray]
    bits: int
    container: str


def _bn_factor_shift(bn: nn.BatchNorm2d, where: str):
    if bn.running_mean is None:
        raise ValueError(f"{where}: the BatchNorm after it has no running statistics and cannot be folded")
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    f = gamma / torch.sqrt(var + bn.eps)
    return f, mean, beta


@torch.no_grad()
def export_weight(layer: nn.Module, where: str, bn: Optional[nn.BatchNorm2d], container: str,
                  input_scale: Optional[float] = None) -> ExportedWeight:
    """The integer weight of a QuantConv2d / QuantLinear (plus the BN it absorbs) for ``container``
    ('int8', or 'int4' for grids of at most 4 bits). ``input_scale``: the scale of the layer's
    input codes when its bias goes into the graph as int32 on ``input_scale * scale``; a channel's
    codes are then spread only as far as that bias stays inside int32. Raises ValueError naming
    ``where``."""
    if container not in CONTAINERS:
        raise ValueError(f"container must be one of {sorted(CONTAINERS)}, got {container!r}")
    codes, scale, zp, qmin, qmax = integer_weight(layer, where)
    bits = int(qmax - qmin).bit_length()
    lo, hi = CONTAINERS[container]
    if hi - lo < qmax - qmin:
        raise ValueError(f"{where}: {bits}-bit weights do not fit the {container} container")
    out_ch = codes.shape[0]
    bias = layer.bias.detach().double() if getattr(layer, "bias", None) is not None else torch.zeros(out_ch, dtype=torch.float64)
    has_bias = getattr(layer, "bias", None) is not None
    sign = torch.ones(out_ch, dtype=torch.float64)
    scale64 = scale.double()
    if bn is not None:
        f, mean, beta = _bn_factor_shift(bn, where)
        bias = (bias - mean) * f + beta
        has_bias = True
        sign = torch.where(f < 0, -1.0, 1.0).double()
        scale64 = scale64 * f.abs()
    view = (-1,) + (1,) * (codes.dim() - 1)
    s = sign.to(torch.int64).view(view)
    q, z = codes.to(torch.int64), zp.to(torch.int64).view(view)
    d = s * (q - z)  # dequantized weight / scale, exact integers
    flat = d.reshape(out_ch, -1)
    fits = (flat.min(1).values >= lo) & (flat.max(1).values <= hi)
    # channels whose folded codes do not fit keep a zero point: codes sign*q shifted so the whole
    # grid lands inside the container
    shift = torch.where(sign > 0, lo - qmin, lo + qmax).to(torch.int64)
    kept_codes = s * q + shift.view(view)
    kept_zp = sign.to(torch.int64) * zp.to(torch.int64) + shift
    peak = flat.abs().max(1).values.clamp_min(1)
    spread = torch.ones(out_ch, dtype=torch.int64)
    # a spread of 2^k makes the accumulator grid 2^k finer, so the bias k more bits long
    bias_steps = (bias.abs() / (float(input_scale) * scale64) if input_scale and has_bias
                  else torch.zeros(out_ch, dtype=torch.float64))

    def can_grow(spread):
        return (2 * spread * peak <= hi) & fits & (bias_steps * (2 * spread).double() < INT32_MAX)

    grow = can_grow(spread)
    while bool(grow.any()):
        spread = torch.where(grow, 2 * spread, spread)
        grow = can_grow(spread)
    cmask = fits.view(view)
    out_codes = torch.where(cmask, d * spread.view(view), kept_codes)
    out_zp = torch.where(fits, torch.zeros_like(kept_zp), kept_zp)
    scale64 = scale64 / spread.double()
    scale32 = scale64.float()
    # a channel whose codes are all zero has weight 0 at any scale: give it one that keeps its
    # bias inside int32 (a dead channel's calibrated scale is ~1e-8)
    dead = (flat == 0).all(1)
    scale32 = torch.where(dead, torch.ones_like(scale32), scale32)
    assert int(out_codes.min()) >= lo and int(out_codes.max()) <= hi
    return ExportedWeight(out_codes.numpy(), scale32.numpy().astype(np.float32), out_zp.numpy(),
                          bias.numpy() if has_bias else None, bits, container)


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scale: np.ndarray, where: str):
    """``(int32 codes, fp32 scales)`` of ``bias`` on the accumulator grid ``input_scale * weight_scale``."""
    acc_scale = (np.float32(input_scale) * weight_scale.astype(np.float32)).astype(np.float32)
    q = np.rint(bias / acc_scale.astype(np.float64))
    if np.abs(q).max(initial=0) >= INT32_MAX:
        raise ValueError(f"{where}: its bias does not fit int32 on the accumulator grid (input scale "
                         f"{input_scale:.3g} x weight scale down to {weight_scale.min():.3g}); the QDQ graph "
                         "cannot hold it")
    return q.astype(np.int32), acc_scale
