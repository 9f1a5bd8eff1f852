"""The convolutions the ``conv_forms`` ops re-express, written plainly: the oracle of their tests and
the source of their registered gradient formulas."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def conv3x3_narrow(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    return F.conv2d(x, weight, bias, padding=1)


def upsample2x_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)


def conv3x3_narrow_backward(dy, x, weight, needs):
    """(dx, dweight, dbias) of ``conv2d(x, weight, bias, padding=1)``; ``needs``: which are wanted."""
    dx = torch.nn.grad.conv2d_input(x.shape, weight, dy, padding=1) if needs[0] else None
    dw = torch.nn.grad.conv2d_weight(x, weight.shape, dy, padding=1) if needs[1] else None
    db = dy.sum((0, 2, 3)) if needs[2] else None
    return dx, dw, db


def upsample2x_conv3x3_backward(dy, x, weight, needs):
    """(dx, dweight, dbias) of :func:`upsample2x_conv3x3`: the conv's gradients on the upsampled
    input, then each 2x2 block of the input gradient summed into the pixel it repeats."""
    n, c, h, w = x.shape
    up_shape = (n, c, 2 * h, 2 * w)
    dx = dw = None
    if needs[0]:
        dx = torch.nn.grad.conv2d_input(up_shape, weight, dy, padding=1).view(n, c, h, 2, w, 2).sum((3, 5))
    if needs[1]:
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        dw = torch.nn.grad.conv2d_weight(up, weight.shape, dy, padding=1)
    db = dy.sum((0, 2, 3)) if needs[2] else None
    return dx, dw, db
