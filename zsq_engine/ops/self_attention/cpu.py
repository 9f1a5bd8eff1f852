"""The self-attention primitives on the C++ extension (``_C.<primitive>_cpu``,
csrc/bind/self_attention.cpp; float32 only, other dtypes go to the reference)."""
from __future__ import annotations

import torch

from zsq_engine._ext import get_extension

from ..dispatch import register
from . import reference

_C = get_extension()

if _C is not None:
    @register("self_attention_forward", "cpu")
    def self_attention_forward(u):
        if u.dtype != torch.float32:
            return reference.self_attention_forward(u)
        return _C.self_attention_forward_cpu(u)

    @register("self_attention_backward", "cpu")
    def self_attention_backward(u, out, lse, grad_out):
        if u.dtype != torch.float32:
            return reference.self_attention_backward(u, out, lse, grad_out)
        return _C.self_attention_backward_cpu(u, out, lse, grad_out)
