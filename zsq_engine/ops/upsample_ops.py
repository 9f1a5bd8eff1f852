"""``upsample2x_conv3x3(x, w, b)`` = ``conv2d(interpolate(x, scale_factor=2, mode='nearest'), w, b,
padding=1)`` in 4/9 of the multiply-adds.

The GDFQ / ZAQ generators upsample by nearest-neighbour repetition and then convolve. After the
repetition, every output pixel of a given parity (row parity a, column parity b) sees the same
low-resolution pixel under two or three of its nine taps, so those taps can be summed into the
weight first: each of the four parity classes ("phases") is a 2x2 convolution of the
*low-resolution* input. Rows, for kernel rows w0, w1, w2 (offsets -1, 0, +1 in the upsampled image):

* a = 0 (even output row 2i): rows 2i-1, 2i, 2i+1 come from low-res rows i-1, i, i,
  so the 2x2 weight's rows are (w0, w1 + w2) at low-res offsets (-1, 0);
* a = 1 (odd output row 2i+1): rows 2i, 2i+1, 2i+2 come from low-res rows i, i, i+1,
  so its rows are (w0 + w1, w2) at offsets (0, +1);

and the same for columns. The zero padding of the upsampled image is the zero padding of the
low-resolution one (upsampled row -1 is low-res row -1). The result is exact up to float
summation order; with autograd the weight gradient flows back through the tap sums.

How much it saves: docs/qat.md (``benchmarks/conv_forms.py``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..opspec import checks

__all__ = ["upsample2x_conv3x3", "phase_weights"]


def _fold_taps(w: torch.Tensor, dim: int):
    """The two 2-tap folds of a 3-tap kernel axis ``dim``: (w0, w1 + w2) and (w0 + w1, w2)."""
    t0, t1, t2 = w.unbind(dim)
    return torch.stack((t0, t1 + t2), dim), torch.stack((t0 + t1, t2), dim)


def phase_weights(weight: torch.Tensor):
    """``[[k00, k01], [k10, k11]]``: the 2x2 kernel of output phase (row parity a, column parity b)."""
    rows = _fold_taps(weight, 2)
    return [list(_fold_taps(r, 3)) for r in rows]


def upsample2x_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode='nearest'), weight, bias, padding=1)``.

    ``x`` [N, C_in, H, W]; ``weight`` [C_out, C_in, 3, 3]; ``bias`` [C_out] or None. Returns
    [N, C_out, 2H, 2W], differentiable in all three. Any float dtype and device (plain PyTorch
    convolutions run each phase)."""
    checks.check_conv3x3_args(x, weight, bias)
    n, _, h, w = x.shape
    kernels = phase_weights(weight)
    xp = F.pad(x, (1, 1, 1, 1))
    # phase a reads padded rows a .. a + h (low-res rows a-1 .. a+h-1), phase b likewise in columns
    rows = [torch.stack([F.conv2d(xp[:, :, a:a + h + 1, b:b + w + 1], kernels[a][b], bias) for b in (0, 1)], -1)
            for a in (0, 1)]                                     # each [N, C_out, H, W, 2 (b)]
    return torch.stack(rows, 3).reshape(n, weight.shape[0], 2 * h, 2 * w)   # [N, C_out, H, 2 (a), W, 2 (b)]
