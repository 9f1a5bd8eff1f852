"""Reference integer conv (the oracle of ``qconv2d_nhwc`` / ``conv2d_int``'s kernels): the exact
product in fp64, then the epilogue in fp64 (:mod:`..int_gemm.reference`). Kernels match it exactly
for int32 outputs and within the epilogue's error budget otherwise."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..int_gemm.reference import apply_reference


def conv_product_reference(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, dilation=1, groups=1,
                           pad_value: int = 0, act_zero_point: int = 0, weight_zero_point=None) -> torch.Tensor:
    """Exact fp64 ``sum (x - za)(w - zw)`` of an NHWC conv whose padding holds ``pad_value``.

    ``x`` [B, H, W, C]; ``w`` [O, kh, kw, C / groups]; returns fp64 [B, OH, OW, O]."""
    pad = (padding, padding) if isinstance(padding, int) else tuple(padding)
    xd = x.double().permute(0, 3, 1, 2)
    xd = F.pad(xd, (pad[1], pad[1], pad[0], pad[0]), value=float(pad_value)) - act_zero_point
    wd = w.double().permute(0, 3, 1, 2)
    if weight_zero_point is not None:
        zw = weight_zero_point if isinstance(weight_zero_point, torch.Tensor) else torch.tensor(weight_zero_point)
        wd = wd - zw.to(device=w.device, dtype=torch.float64).reshape(-1, 1, 1, 1)
    out = F.conv2d(xd, wd, None, stride, 0, dilation, groups)
    return out.permute(0, 2, 3, 1)


def qconv2d_nhwc(x, w, stride, padding, dilation, groups, epilogue, pad_value):
    ep = epilogue
    product = conv_product_reference(x, w, stride, padding, dilation, groups, pad_value,
                                     0 if ep is None else ep.act_zero_point,
                                     None if ep is None else ep.weight_zero_point)
    b, oh, ow, o = product.shape
    out = apply_reference(product.reshape(b * oh * ow, o), ep)
    return out.reshape(b, oh, ow, o)


def conv2d_int(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0, dilation=1, groups=1,
               layout: str = "NCHW") -> torch.Tensor:
    xd = x.double()
    if layout == "NHWC":
        xd = xd.permute(0, 3, 1, 2)
    out = F.conv2d(xd, weight.double(), None, stride, padding, dilation, groups).to(torch.int32)
    if layout == "NHWC":
        out = out.permute(0, 2, 3, 1).contiguous()
    return out
