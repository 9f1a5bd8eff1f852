"""The fake-quant primitives on the C++ extension (``_C.<primitive>_cpu``, csrc/bind/fake_quant.cpp).

The kernels take float32 / float16 / bfloat16 tensors; float64 tensors (and mixed dtypes) go to
the reference primitive, which defines the result for them, so dispatch never fails on a valid
input.
"""
from __future__ import annotations

import torch

from zsq_engine._ext import get_extension

from ..dispatch import register
from . import reference

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def kernel_or_reference(kernel, ref, n_tensors: int):
    """``kernel`` when the first ``n_tensors`` arguments share one kernel dtype, else ``ref``."""
    def primitive(*args):
        dtype = args[0].dtype
        if dtype not in KERNEL_DTYPES or any(a.dtype != dtype for a in args[1:n_tensors]):
            return ref(*args)
        return kernel(*args)

    primitive.__name__ = kernel.__name__
    primitive.__doc__ = kernel.__doc__
    return primitive


_C = get_extension()

if _C is not None:
    for _name, _n_tensors in (("fq_forward", 1), ("fq_backward", 2), ("lsq_backward", 2),
                              ("qdrop_fq_forward", 1), ("qdrop_fq_backward", 2), ("qdrop_lsq_backward", 2)):
        register(_name, "cpu")(kernel_or_reference(getattr(_C, f"{_name}_cpu"), getattr(reference, _name),
                                                   _n_tensors))
