"""The op layer of zsq_engine: one public function per op, many kernels behind it.

Each op validates its arguments, then dispatches (see :mod:`zsq_engine.ops.dispatch`) to the
best implementation that can run: Triton or the CUDA extension for CUDA tensors, the C++
extension for CPU tensors, and the pure-PyTorch reference (the oracle of every test) otherwise.
Force one with ``ZSQ_BACKEND=reference|triton|cuda|cpu`` or ``with use_backend(name): ...``.
"""
from .bn_stats import BNLossSpec, bn_stat_loss
from .dispatch import BACKENDS, BackendUnavailableError, available_backends, backend_status, use_backend
from ..opspec.epilogue import Epilogue
from .int4_pack import pack_int4, unpack_int4
from .int_conv import conv2d_int, qconv2d_nhwc
from .int_gemm import int_mm, qgemm
from .conv_forms import conv3x3_narrow, narrow_conv_pays, upsample2x_conv3x3
from .adaround import adaround_fake_quant, adaround_h, adaround_init, adaround_regularizer
from .fake_quant import fake_quant, lsq_fake_quant, qdrop_fake_quant
from .qdrop_mix import qdrop_mix
from .scale_search import minmax_qparams, scale_search
from .self_attention import self_attention

__all__ = [
    "adaround_fake_quant", "adaround_h", "adaround_init", "adaround_regularizer", "available_backends",
    "backend_status", "BACKENDS", "BackendUnavailableError", "bn_stat_loss", "BNLossSpec", "conv2d_int",
    "conv3x3_narrow", "Epilogue", "fake_quant", "int_mm", "lsq_fake_quant", "minmax_qparams",
    "narrow_conv_pays", "pack_int4", "qconv2d_nhwc", "qdrop_fake_quant", "qdrop_mix", "qgemm", "scale_search",
    "self_attention", "unpack_int4", "upsample2x_conv3x3", "use_backend",
]
