"""The integer NHWC conv on Triton (``kernels/int_conv.py::int8_conv2d_nhwc``); grouped convs that
are not depthwise and per-row activation scales go to the reference (no kernel yet). Nothing
without Triton (then :data:`qconv2d_nhwc` is None)."""
from __future__ import annotations

import torch

from ..dispatch import register
from . import reference

try:
    from zsq_engine.kernels import int_conv as _kernels
except Exception:  # no Triton on this machine
    _kernels = None


def _qconv2d_nhwc(x, w, stride, padding, dilation, groups, epilogue, pad_value):
    c, o = x.shape[3], w.shape[0]
    per_row = epilogue is not None and isinstance(epilogue.act_scale, torch.Tensor) and epilogue.act_scale.numel() > 1
    if (groups != 1 and not (groups == c == o)) or per_row:
        return reference.qconv2d_nhwc(x, w, stride, padding, dilation, groups, epilogue, pad_value)
    return _kernels.int8_conv2d_nhwc(x, w, stride, padding, dilation, groups, epilogue, pad_value)


qconv2d_nhwc = None if _kernels is None else register("qconv2d_nhwc", "triton")(_qconv2d_nhwc)
