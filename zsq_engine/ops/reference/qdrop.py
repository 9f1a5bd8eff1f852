"""Reference QDrop mixing: per element, the quantized value with probability ``p`` else the float one."""
from __future__ import annotations

import torch

from .fake_quant import fq_backward, fq_forward, lsq_backward
from .rng import uniform


def _keep_mask(x: torch.Tensor, p: float, seed: int, offset: int) -> torch.Tensor:
    return uniform(seed, x.numel(), offset, device=x.device).reshape(x.shape) < p


def qdrop_mix(x_q: torch.Tensor, x_fp: torch.Tensor, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    return torch.where(_keep_mask(x_q, p, seed, offset), x_q, x_fp)


# Primitives of the fused "fake-quantize, then QDrop" activation op: an element is quantized
# where uniform(seed, index) < p and passed through in float elsewhere.

def qdrop_fq_forward(x, scale, zero_point, quant_min, quant_max, axis, p, seed, offset):
    return torch.where(_keep_mask(x, p, seed, offset),
                       fq_forward(x, scale, zero_point, quant_min, quant_max, axis), x)


def qdrop_fq_backward(dy, x, scale, zero_point, quant_min, quant_max, axis, p, seed, offset):
    return torch.where(_keep_mask(x, p, seed, offset),
                       fq_backward(dy, x, scale, zero_point, quant_min, quant_max, axis), dy)


def qdrop_lsq_backward(dy, x, scale, zero_point, quant_min, quant_max, axis, grad_factor, p, seed, offset):
    keep = _keep_mask(x, p, seed, offset)
    dx_q, dscale, dzp = lsq_backward(dy * keep.to(dy.dtype), x, scale, zero_point, quant_min, quant_max, axis,
                                     grad_factor)
    return torch.where(keep, dx_q, dy), dscale, dzp
