"""``conv3x3_narrow(x, w, b)`` = ``conv2d(x, w, b, padding=1)`` for convolutions with few output
channels (a generator's last layer: 64 channels -> 1 or 3), as one batched GEMM and nine shifted
sums, or with few input channels (a grayscale stem), as nine shifted copies and one GEMM: CPU
speed forms where oneDNN's convolution is slow at these shapes. Same function as the
convolution up to float summation order; where it pays was measured (:func:`narrow_conv_pays`;
figures in docs/architecture.md, "CPU speed forms", and docs/qat.md), on CUDA cuDNN is used.

Few outputs: ``z[n, (tap, co), p] = sum_ci w[co, ci, tap] x[n, ci, p]`` (a [9 C_out, C_in] x
[C_in, HW] GEMM per image), then ``y[n, co, i, j] = sum_tap z[n, (tap, co), i + dy - 1, j + dx - 1]``
(zero outside); the extra memory ``z`` is 9 x C_out per pixel, small exactly when C_out is.
Few inputs: ``cols`` = the nine shifted copies of the input ([N, 9 C_in, HW]), then one
[C_out, 9 C_in] x [9 C_in, HW] GEMM per image.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..opspec import checks

__all__ = ["conv2d_narrow_aware", "conv3x3_narrow", "narrow_conv_pays", "NARROW_MAX_IN", "NARROW_MAX_OUT"]

# Where the GEMM forms beat oneDNN on CPU (measured: docs/architecture.md, "CPU speed forms"):
# at most 4 outputs (the nine taps' GEMM output stays small), or a single input channel.
NARROW_MAX_OUT = 4
NARROW_MAX_IN = 1


def narrow_conv_pays(x: torch.Tensor, weight: torch.Tensor, stride=(1, 1), padding=(1, 1), dilation=(1, 1),
                     groups: int = 1) -> bool:
    """True where ``conv2d(x, weight, ..., stride, padding, dilation, groups)`` is a 3x3, stride
    1, padding 1 convolution of a CPU float tensor with at most ``NARROW_MAX_OUT`` output or
    ``NARROW_MAX_IN`` input channels: where :func:`conv3x3_narrow` was measured to beat the
    library convolution."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype in (torch.float32, torch.float64)
            and weight.dim() == 4 and tuple(weight.shape[2:]) == (3, 3) and groups == 1
            and tuple(stride) == (1, 1) and tuple(padding) == (1, 1) and tuple(dilation) == (1, 1)
            and (weight.shape[0] <= NARROW_MAX_OUT or weight.shape[1] <= NARROW_MAX_IN))


def conv3x3_narrow(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``conv2d(x, weight, bias, stride=1, padding=1)`` for a 3x3 ``weight`` [C_out, C_in, 3, 3]
    and ``x`` [N, C_in, H, W]; returns [N, C_out, H, W], differentiable in all three."""
    checks.check_conv3x3_args(x, weight, bias)
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


def conv2d_narrow_aware(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=(1, 1),
                        padding=(1, 1), dilation=(1, 1), groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` with these arguments, through :func:`conv3x3_narrow` where :func:`narrow_conv_pays`
    (the one place the convolution modules decide)."""
    if narrow_conv_pays(x, weight, stride, padding, dilation, groups):
        return conv3x3_narrow(x, weight, bias)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
