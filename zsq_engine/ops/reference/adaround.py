"""Reference AdaRound (BRECQ) and its Genie-M variant with a learned step size.

``h(alpha) = clamp(sigmoid(alpha) * (zeta - gamma) + gamma, 0, 1)`` (rectified sigmoid,
gamma=-0.1, zeta=1.1); soft weights
``W = (clamp(w_floor + h + zero_point, quant_min, quant_max) - zero_point) * scale``; the hard
version uses ``h = (alpha >= 0)``. ``w_floor = floor(W0 / s0)`` is frozen; BRECQ keeps the scale
fixed, Genie-M learns it together with alpha, so gradients flow to both. The regularizer is
``sum(1 - |2h - 1|^beta)``. Autograd through plain torch ops defines the gradients.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..checks import channel_view_shape

GAMMA = -0.1
ZETA = 1.1


def _broadcast(v: torch.Tensor, ndim: int, axis: Optional[int]) -> torch.Tensor:
    return v.reshape(()) if axis is None else v.reshape(channel_view_shape(ndim, axis))


def rectified_sigmoid(alpha: torch.Tensor, gamma: float = GAMMA, zeta: float = ZETA) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(alpha) * (zeta - gamma) + gamma, 0.0, 1.0)


def adaround_fake_quant(w_floor, alpha, scale, zero_point, quant_min, quant_max, axis=0, hard=False,
                        gamma=GAMMA, zeta=ZETA):
    h = (alpha >= 0).to(alpha.dtype) if hard else rectified_sigmoid(alpha, gamma, zeta)
    zp = _broadcast(zero_point.to(w_floor.dtype), w_floor.dim(), axis)
    s = _broadcast(scale.to(w_floor.dtype), w_floor.dim(), axis)
    return (torch.clamp(w_floor + h + zp, quant_min, quant_max) - zp) * s


def adaround_regularizer(alpha, beta, gamma=GAMMA, zeta=ZETA):
    h = rectified_sigmoid(alpha, gamma, zeta)
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


def adaround_init(weight: torch.Tensor, scale: torch.Tensor, axis: Optional[int] = 0,
                  gamma: float = GAMMA, zeta: float = ZETA) -> Tuple[torch.Tensor, torch.Tensor]:
    """(w_floor, alpha) such that h(alpha) equals the fractional part of weight / scale."""
    ws = weight / _broadcast(scale.to(weight.dtype), weight.dim(), axis)
    w_floor = torch.floor(ws)
    frac = ws - w_floor
    # inverse of the rectified sigmoid on its unclamped part: sigmoid(alpha) = (frac - gamma)/(zeta - gamma)
    alpha = -torch.log((zeta - gamma) / (frac - gamma) - 1.0)
    return w_floor, alpha

