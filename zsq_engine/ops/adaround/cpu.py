"""The AdaRound primitives on the C++ extension (``_C.<primitive>_cpu``, csrc/bind/adaround.cpp).

Float64 tensors and weights / logits of different dtypes go to the reference primitive, which
defines the result for them (type promotion)."""
from __future__ import annotations

from zsq_engine._ext import get_extension

from ..dispatch import register
from ..fake_quant.cpu import KERNEL_DTYPES, kernel_or_reference
from . import reference

_C = get_extension()

if _C is not None:
    for _name, _n_tensors in (("adaround_forward", 2), ("adaround_backward", 3), ("adaround_reg_forward", 1)):
        register(_name, "cpu")(kernel_or_reference(getattr(_C, f"{_name}_cpu"), getattr(reference, _name),
                                                   _n_tensors))

    @register("adaround_reg_backward", "cpu")
    def adaround_reg_backward(grad_out, alpha, beta):
        # grad_out is always fp32 (the op converts it): alpha alone decides
        if alpha.dtype not in KERNEL_DTYPES:
            return reference.adaround_reg_backward(grad_out, alpha, beta)
        return _C.adaround_reg_backward_cpu(grad_out, alpha, beta)
