"""The conv-forms family: convolutions re-expressed as the same function in a form that is faster
at the shapes of the demo models (the GDFQ / ZAQ generators, grayscale stems), and where to use
them: ``upsample2x_conv3x3`` (nearest x2 upsample + 3x3 conv as four 2x2 phase convolutions, 4/9
of the multiply-adds, any device), ``conv3x3_narrow`` (a 3x3 conv with few output or input
channels as GEMMs, CPU), ``narrow_conv_pays`` / ``conv2d_narrow_aware`` (the one place the
convolution modules decide). Speed tricks, not quantization ops: ``quant``, ``qat`` and ``synth``
use them. This file: the public functions; ``forms.py``: the re-expressed forms;
``library.py``: the torch.library ops; ``reference.py``: the plain convolutions (the oracle).
Measured speed-ups: docs/architecture.md, "CPU speed forms", and docs/qat.md."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ...opspec import checks
from ..schema import compiling
from . import forms, library

__all__ = ["conv2d_narrow_aware", "conv3x3_narrow", "narrow_conv_pays", "upsample2x_conv3x3", "NARROW_MAX_IN",
           "NARROW_MAX_OUT"]

# Where the GEMM forms beat oneDNN on CPU (measured: docs/architecture.md, "CPU speed forms"):
# at most 4 outputs (the nine taps' GEMM output stays small), or a single input channel.
NARROW_MAX_OUT = 4
NARROW_MAX_IN = 1


def upsample2x_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode='nearest'), weight, bias, padding=1)``.

    ``x`` [N, C_in, H, W]; ``weight`` [C_out, C_in, 3, 3]; ``bias`` [C_out] or None. Returns
    [N, C_out, 2H, 2W], differentiable in all three. Any float dtype and device."""
    checks.check_conv3x3_args(x, weight, bias)
    if compiling():
        return library.upsample2x_conv3x3(x, weight, bias)
    return forms.upsample2x_conv3x3(x, weight, bias)  # autograd through the form: its backward is fast too


def conv3x3_narrow(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``conv2d(x, weight, bias, stride=1, padding=1)`` for a 3x3 ``weight`` [C_out, C_in, 3, 3]
    and ``x`` [N, C_in, H, W]; returns [N, C_out, H, W], differentiable in all three."""
    checks.check_conv3x3_args(x, weight, bias)
    if compiling():
        return library.conv3x3_narrow(x, weight, bias)
    return forms.conv3x3_narrow(x, weight, bias)


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


def conv2d_narrow_aware(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=(1, 1),
                        padding=(1, 1), dilation=(1, 1), groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` with these arguments, through :func:`conv3x3_narrow` where :func:`narrow_conv_pays`
    (the one place the convolution modules decide)."""
    if narrow_conv_pays(x, weight, stride, padding, dilation, groups):
        return conv3x3_narrow(x, weight, bias)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
