"""The torch.library ops of the integer conv family: ``zsq::qconv2d_nhwc`` and ``zsq::conv2d_int``
(:func:`..schema.define_op`). The epilogue crosses the schema as ``EPILOGUE_SCHEMA``'s typed
arguments (:mod:`zsq_engine.opspec.epilogue`). The same names in ``reference.py`` and
``kernels/int_conv.py``; the C++ conv (``_C.int_conv2d_nhwc_cpu``, an implicit GEMM) is bound in
``csrc/bind/int_conv.cpp``."""
from __future__ import annotations

import torch

from ...opspec.epilogue import (EPILOGUE_ARG_COUNT, EPILOGUE_SCHEMA, epilogue_from_schema_args,
                                 schema_out_dtype)
from ..dispatch import register
from ..schema import define_op
from . import reference as _ref

register("qconv2d_nhwc", "reference")(_ref.qconv2d_nhwc)
register("conv2d_int", "reference")(_ref.conv2d_int)


def _qconv2d_nhwc_primitive_args(x, w, stride, padding, dilation, groups, *rest):
    ep_args, pad_value = rest[:EPILOGUE_ARG_COUNT], rest[EPILOGUE_ARG_COUNT]
    return (x, w, tuple(stride), tuple(padding), tuple(dilation), groups, epilogue_from_schema_args(ep_args),
            pad_value)


def _qconv2d_nhwc_fake(x, w, stride, padding, dilation, groups, *rest):
    out_dtype = schema_out_dtype(rest[:EPILOGUE_ARG_COUNT])
    oh = (x.shape[1] + 2 * padding[0] - dilation[0] * (w.shape[1] - 1) - 1) // stride[0] + 1
    ow = (x.shape[2] + 2 * padding[1] - dilation[1] * (w.shape[2] - 1) - 1) // stride[1] + 1
    return x.new_empty((x.shape[0], oh, ow, w.shape[0]), dtype=out_dtype)


def _conv_out(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _conv2d_int_fake(x, weight, stride, padding, dilation, groups, layout):
    h, w = (x.shape[2], x.shape[3]) if layout == "NCHW" else (x.shape[1], x.shape[2])
    oh = _conv_out(h, weight.shape[2], stride[0], padding[0], dilation[0])
    ow = _conv_out(w, weight.shape[3], stride[1], padding[1], dilation[1])
    shape = (x.shape[0], weight.shape[0], oh, ow) if layout == "NCHW" else (x.shape[0], oh, ow, weight.shape[0])
    return x.new_empty(shape, dtype=torch.int32)


QCONV2D_NHWC = define_op("qconv2d_nhwc", f"(Tensor x, Tensor w, int[2] stride, int[2] padding, int[2] dilation, "
                         f"int groups, {EPILOGUE_SCHEMA}, int pad_value) -> Tensor",
                         _ref.qconv2d_nhwc, _qconv2d_nhwc_fake, _qconv2d_nhwc_primitive_args)
CONV2D_INT = define_op("conv2d_int", "(Tensor x, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
                       "int groups, str layout) -> Tensor", _ref.conv2d_int, _conv2d_int_fake)
PRIMITIVES = (QCONV2D_NHWC, CONV2D_INT)
