"""The op layer of zsq_engine: one public function per op, many kernels behind it.

Each op validates its arguments, then dispatches (see :mod:`zsq_engine.ops.dispatch`) to the
best implementation that can run: Triton or the CUDA extension for CUDA tensors, the C++
extension for CPU tensors, and the pure-PyTorch reference (the oracle of every test) otherwise.
Force one with ``ZSQ_BACKEND=reference|triton|cuda|cpu`` or ``with use_backend(name): ...``.
"""
from .bn_stats import BNLossSpec, bn_stat_loss
from .dispatch import BACKENDS, BackendUnavailableError, available_backends, backend_status, use_backend
from .epilogue import Epilogue
from .integer_ops import conv2d_int, int_mm, pack_int4, unpack_int4
from .narrow_conv_ops import conv3x3_narrow, narrow_conv_pays
from .quantized_ops import qconv2d_nhwc, qgemm
from .adaround import adaround_fake_quant, adaround_h, adaround_init, adaround_regularizer
from .fake_quant import fake_quant, lsq_fake_quant, qdrop_fake_quant
from .qdrop_mix import qdrop_mix
from .scale_search import minmax_qparams, scale_search
from .self_attention import self_attention
from .upsample_ops import upsample2x_conv3x3

__all__ = [
    "adaround_fake_quant", "adaround_h", "adaround_init", "adaround_regularizer", "available_backends",
    "backend_status", "BACKENDS", "BackendUnavailableError", "bn_stat_loss", "BNLossSpec", "conv2d_int",
    "conv3x3_narrow", "Epilogue", "fake_quant", "int_mm", "lsq_fake_quant", "minmax_qparams",
    "narrow_conv_pays", "pack_int4", "qconv2d_nhwc", "qdrop_fake_quant", "qdrop_mix", "qgemm", "scale_search",
    "self_attention", "unpack_int4", "upsample2x_conv3x3", "use_backend",
]
