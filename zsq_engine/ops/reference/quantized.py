"""Reference quantized GEMM / NHWC conv: the exact product in fp64, then the epilogue in fp64
(:mod:`.epilogue`). Kernels match it exactly for int32 outputs and within the epilogue's
error budget otherwise."""
from __future__ import annotations

from ...opspec.int4 import unpack_int4
from .epilogue import apply_reference, conv_product_reference, zero_point_product_reference


def qgemm(a, w, epilogue, w_packed, a_packed, a_signed, k):
    if a_packed:
        a = unpack_int4(a, k, a_signed)
    if w_packed:
        w = unpack_int4(w, k, True)
    ep = epilogue
    product = zero_point_product_reference(a, w, 0 if ep is None else ep.act_zero_point,
                                           None if ep is None else ep.weight_zero_point)
    return apply_reference(product, ep)


def qconv2d_nhwc(x, w, stride, padding, dilation, groups, epilogue, pad_value):
    ep = epilogue
    product = conv_product_reference(x, w, stride, padding, dilation, groups, pad_value,
                                     0 if ep is None else ep.act_zero_point,
                                     None if ep is None else ep.weight_zero_point)
    b, oh, ow, o = product.shape
    out = apply_reference(product.reshape(b * oh * ow, o), ep)
    return out.reshape(b, oh, ow, o)
