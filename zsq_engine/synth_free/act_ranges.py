"""Activation ranges from BatchNorm statistics: activation calibration with no data at all.

DFQ sets each quantized input's range from the BN that produces it: channel ``i`` lies (almost
surely) in ``beta_i +- n gamma_i``, cut to the support of what follows the BN (``[0, inf)``
after a ReLU, ``[0, 6]`` after a ReLU6). Here the per-channel statistics come from
:func:`expected_layer_stats` (through ReLU / ReLU6 as clipped normals, through residual adds as
sums), and a per-tensor grid covers ``[min_i(mean_i - n std_i), max_i(mean_i + n std_i)]``
clipped to the support. After a global pool the per-pixel variance is used (an upper bound, so
the range is conservative); layers with nothing known are left as they are.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from ..quant.calibration import qparams_from_minmax
from ..quant.modules import QuantLayer
from .bias_correction import expected_layer_stats

__all__ = ["bn_activation_ranges", "set_bn_activation_ranges", "DEFAULT_NUM_STD"]

DEFAULT_NUM_STD = 6.0


def bn_activation_ranges(float_model: nn.Module, num_std: float = DEFAULT_NUM_STD) -> Dict[str, Tuple[float, float]]:
    """``{layer name: (low, high)}`` of every layer input the BN statistics determine."""
    if not num_std > 0:
        raise ValueError(f"num_std must be positive, got {num_std!r}")
    ranges = {}
    for name, st in expected_layer_stats(float_model).items():
        if st.var is not None:
            std = st.var.clamp_min(0).sqrt()
            lo = torch.maximum(st.mean - num_std * std, st.lower).min()
            hi = torch.minimum(st.mean + num_std * std, st.upper).max()
        else:
            lo, hi = st.lower.min(), st.upper.max()
        if torch.isfinite(lo) and torch.isfinite(hi) and hi > lo:
            ranges[name] = (float(lo), float(hi))
    return ranges


@torch.no_grad()
def set_bn_activation_ranges(qmodel: nn.Module, float_model: nn.Module, num_std: float = DEFAULT_NUM_STD) -> Dict[str, Tuple[float, float]]:
    """Calibrate the (per-tensor) input quantizers of ``qmodel`` from ``float_model``'s BN statistics.

    Returns the ranges set. Quantizers of other layers keep their state (calibrate those with
    data, or leave them to :func:`zsq_engine.quant.calibrate_activations`).
    """
    ranges = bn_activation_ranges(float_model, num_std)
    done = {}
    for name, layer in qmodel.named_modules():
        if not isinstance(layer, QuantLayer) or layer.act_quantizer is None or name not in ranges:
            continue
        q = layer.act_quantizer
        if q.spec.per_channel:
            continue
        lo, hi = ranges[name]
        scale, zp = qparams_from_minmax(q.spec, torch.tensor([lo]), torch.tensor([hi]))
        q.set_qparams(scale, zp)
        done[name] = (lo, hi)
    return done
