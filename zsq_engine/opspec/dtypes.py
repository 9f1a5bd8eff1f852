"""dtype and activation constants of the ops and kernels."""
from __future__ import annotations

import torch

# Floating tensors the quantization ops take and return.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Quantization parameters may also come in fp64; they are used in fp32.
PARAM_DTYPES = FLOAT_DTYPES + (torch.float64,)

# Outputs of the integer GEMM / conv epilogue.
FLOAT_OUT_DTYPES = FLOAT_DTYPES
QUANT_OUT_DTYPES = (torch.int8, torch.uint8)
OUT_DTYPES = (torch.int32,) + FLOAT_OUT_DTYPES + QUANT_OUT_DTYPES

# Activations of the epilogue, with the integer code the Triton kernels take as a constexpr (the
# C++ calls take the name: csrc/bind/int_epilogue.h).
ACTIVATIONS = ("none", "relu", "relu6")
ACTIVATION_CODES = {"none": 0, "relu": 1, "relu6": 2}
