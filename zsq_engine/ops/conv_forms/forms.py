"""The re-expressed convolutions themselves, in plain PyTorch and differentiable by autograd: what
the ``conv_forms`` ops compute and what their eager public functions run.

``conv3x3_narrow`` = ``conv2d(x, w, b, padding=1)`` for few output channels (a generator's last
layer: 64 channels -> 1 or 3) as one batched GEMM and nine shifted sums,
``z[n, (tap, co), p] = sum_ci w[co, ci, tap] x[n, ci, p]`` (a [9 C_out, C_in] x [C_in, HW] GEMM per
image), then ``y[n, co, i, j] = sum_tap z[n, (tap, co), i + dy - 1, j + dx - 1]`` (zero outside):
the extra memory ``z`` is 9 x C_out per pixel, small exactly when C_out is. For few input
channels (a grayscale stem): ``cols`` = the nine shifted copies of the input ([N, 9 C_in, HW]),
then one [C_out, 9 C_in] x [9 C_in, HW] GEMM per image.

``upsample2x_conv3x3`` = ``conv2d(interpolate(x, scale_factor=2, mode='nearest'), w, b,
padding=1)`` in 4/9 of the multiply-adds. After the nearest-neighbour repetition, every output
pixel of a given parity (row parity a, column parity b) sees the same low-resolution pixel under
two or three of its nine taps, so those taps can be summed into the weight first: each of the four
parity classes ("phases") is a 2x2 convolution of the *low-resolution* input. Rows, for kernel
rows w0, w1, w2 (offsets -1, 0, +1 in the upsampled image):

* a = 0 (even output row 2i): rows 2i-1, 2i, 2i+1 come from low-res rows i-1, i, i,
  so the 2x2 weight's rows are (w0, w1 + w2) at low-res offsets (-1, 0);
* a = 1 (odd output row 2i+1): rows 2i, 2i+1, 2i+2 come from low-res rows i, i, i+1,
  so its rows are (w0 + w1, w2) at offsets (0, +1);

and the same for columns. The zero padding of the upsampled image is the zero padding of the
low-resolution one (upsampled row -1 is low-res row -1).

Both are the same function as the convolution up to float summation order.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["conv3x3_narrow", "phase_weights", "upsample2x_conv3x3"]


def conv3x3_narrow(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``conv2d(x, weight, bias, stride=1, padding=1)`` as GEMMs (the module doc)."""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    if c_in < c_out:
        return _few_inputs(x, weight, bias)
    taps = weight.permute(2, 3, 0, 1).reshape(9 * c_out, c_in)          # row (dy * 3 + dx) * C_out + co
    z = torch.bmm(taps.expand(n, -1, -1), x.reshape(n, c_in, h * w))     # [N, 9 C_out, HW]
    z = F.pad(z.view(n, 9, c_out, h, w), (1, 1, 1, 1))                  # zero ring = the conv's padding
    # output (i, j) takes tap (dy, dx) from input (i + dy - 1, j + dx - 1) = padded z at (i + dy, j + dx)
    y = z[:, 0, :, 0:h, 0:w]
    for t in range(1, 9):
        dy, dx = divmod(t, 3)
        y = y + z[:, t, :, dy:dy + h, dx:dx + w]
    return y if bias is None else y + bias.view(1, c_out, 1, 1)


def _few_inputs(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The transposed form, for few input channels (a grayscale stem): the nine shifted
    copies of the input first (``cols`` [N, 9 C_in, HW], small exactly when C_in is), then one
    [C_out, 9 C_in] x [9 C_in, HW] GEMM per image."""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    xp = F.pad(x, (1, 1, 1, 1))
    cols = torch.stack([xp[:, :, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], 2)  # [N, C_in, 9, H, W]
    y = torch.bmm(weight.reshape(c_out, c_in * 9).expand(n, -1, -1), cols.view(n, c_in * 9, h * w))
    y = y.view(n, c_out, h, w)
    return y if bias is None else y + bias.view(1, c_out, 1, 1)


def _fold_taps(w: torch.Tensor, dim: int):
    """The two 2-tap folds of a 3-tap kernel axis ``dim``: (w0, w1 + w2) and (w0 + w1, w2)."""
    t0, t1, t2 = w.unbind(dim)
    return torch.stack((t0, t1 + t2), dim), torch.stack((t0 + t1, t2), dim)


def phase_weights(weight: torch.Tensor):
    """``[[k00, k01], [k10, k11]]``: the 2x2 kernel of output phase (row parity a, column parity b)."""
    rows = _fold_taps(weight, 2)
    return [list(_fold_taps(r, 3)) for r in rows]


def upsample2x_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` as four 2x2
    phase convolutions of ``x`` (the module doc)."""
    n, _, h, w = x.shape
    kernels = phase_weights(weight)
    xp = F.pad(x, (1, 1, 1, 1))
    # phase a reads padded rows a .. a + h (low-res rows a-1 .. a+h-1), phase b likewise in columns
    rows = [torch.stack([F.conv2d(xp[:, :, a:a + h + 1, b:b + w + 1], kernels[a][b], bias) for b in (0, 1)], -1)
            for a in (0, 1)]                                     # each [N, C_out, H, W, 2 (b)]
    return torch.stack(rows, 3).reshape(n, weight.shape[0], 2 * h, 2 * w)   # [N, C_out, H, 2 (a), W, 2 (b)]
