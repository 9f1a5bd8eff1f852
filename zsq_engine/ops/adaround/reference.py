"""Reference primitives of the AdaRound family: BRECQ AdaRound and its Genie-M variant with a
learned step size. The oracle every kernel of the family is tested against.

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

from ...opspec.checks import channel_view_shape

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


def adaround_forward(w_floor, alpha, scale, zero_point, quant_min, quant_max, axis, hard):
    """Primitive: the AdaRound weights (soft, or hard with ``h = alpha >= 0``)."""
    return adaround_fake_quant(w_floor, alpha, scale, zero_point, quant_min, quant_max, axis, hard)


def adaround_backward(dy, w_floor, alpha, scale, zero_point, quant_min, quant_max, axis=0,
                      gamma=GAMMA, zeta=ZETA):
    """Primitive: (dalpha, dscale [C] fp32) of the soft AdaRound weights, written out by hand.

    Clamps pass gradient on their closed intervals (as torch.clamp does).
    """
    sig = torch.sigmoid(alpha.float())
    h_lin = sig * (zeta - gamma) + gamma
    zp = _broadcast(zero_point.float(), w_floor.dim(), axis)
    s = _broadcast(scale.float(), w_floor.dim(), axis)
    v = w_floor.float() + h_lin.clamp(0.0, 1.0) + zp
    inside = (v >= quant_min) & (v <= quant_max)
    live = inside & (h_lin >= 0.0) & (h_lin <= 1.0)
    dy32 = dy.float()
    dalpha = (dy32 * s * (zeta - gamma) * sig * (1.0 - sig) * live).to(alpha.dtype)
    dscale_el = (dy32 * (v.clamp(quant_min, quant_max) - zp)).double()
    if axis is None:
        dscale = dscale_el.sum().reshape(scale.shape)
    else:
        dims = [d for d in range(w_floor.dim()) if d != axis]
        dscale = dscale_el.sum(dims) if dims else dscale_el
    return dalpha, dscale.to(torch.float32)


def adaround_regularizer(alpha, beta, gamma=GAMMA, zeta=ZETA):
    h = rectified_sigmoid(alpha, gamma, zeta)
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


def adaround_reg_forward(alpha, beta):
    """Primitive: the regularizer as an fp32 0-dim tensor (fp64 accumulation)."""
    h = rectified_sigmoid(alpha.double())
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum().float()


def adaround_reg_backward(grad_out, alpha, beta, gamma=GAMMA, zeta=ZETA):
    """Primitive: grad_out * d reg / d alpha, written out (torch.clamp passes its closed interval)."""
    sig = torch.sigmoid(alpha.double())
    h_lin = sig * (zeta - gamma) + gamma
    t = 2.0 * h_lin.clamp(0.0, 1.0) - 1.0
    dreg_dt = torch.where(t == 0, torch.zeros_like(t), -beta * t.abs().pow(beta - 1.0) * torch.sign(t))
    live = (h_lin >= 0.0) & (h_lin <= 1.0)
    g = dreg_dt * 2.0 * (zeta - gamma) * sig * (1.0 - sig) * live
    return (g * grad_out.double()).to(alpha.dtype)


def adaround_init(weight: torch.Tensor, scale: torch.Tensor, axis: Optional[int] = 0,
                  gamma: float = GAMMA, zeta: float = ZETA) -> Tuple[torch.Tensor, torch.Tensor]:
    """(w_floor, alpha) such that h(alpha) equals the fractional part of weight / scale."""
    ws = weight / _broadcast(scale.to(weight.dtype), weight.dim(), axis)
    w_floor = torch.floor(ws)
    frac = ws - w_floor
    # inverse of the rectified sigmoid on its unclamped part: sigmoid(alpha) = (frac - gamma)/(zeta - gamma)
    alpha = -torch.log((zeta - gamma) / (frac - gamma) - 1.0)
    return w_floor, alpha
