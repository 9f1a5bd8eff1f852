"""CPU kernels of the C++ extension (``zsq_engine._C``) for the ops not yet in a family folder
(int4 packing, self-attention, BN-statistics loss; the integer GEMM / conv in ``cpu_int``),
registered under the 'cpu' backend. The op families under ``zsq_engine/ops/<family>/`` register
their own in ``<family>/cpu.py``.
"""
from __future__ import annotations

import torch as _torch

from zsq_engine._ext import get_extension

from ..dispatch import register

_C = get_extension()

if _C is not None:
    register("pack_int4", "cpu")(_C.pack_int4_cpu)

    @register("unpack_int4", "cpu")
    def _unpack_int4(packed, k, signed):
        return _C.unpack_int4_cpu(packed, k, signed)


if _C is not None:
    from ..reference import attention as _ref_attention

    @register("self_attention_forward", "cpu")
    def _self_attention_forward(u):
        if u.dtype != _torch.float32:
            return _ref_attention.self_attention_forward(u)
        return _C.self_attention_forward_cpu(u)

    @register("self_attention_backward", "cpu")
    def _self_attention_backward(u, out, lse, grad_out):
        if u.dtype != _torch.float32:
            return _ref_attention.self_attention_backward(u, out, lse, grad_out)
        return _C.self_attention_backward_cpu(u, out, lse, grad_out)


def _bn_spec_args(spec):
    return (bool(spec.per_image), bool(spec.use_std), bool(spec.unbiased), float(spec.std_eps),
            bool(spec.eps_in_std), ("channels", "batch", "mean").index(spec.normalize),
            spec.layer_reduction == "mean")


if _C is not None:
    @register("bn_stats_forward", "cpu")
    def _bn_stats_forward(activations, running_means, running_vars, spec):
        return _C.bn_stats_forward_cpu(list(activations), list(running_means), list(running_vars),
                                       *_bn_spec_args(spec))

    @register("bn_stats_backward", "cpu")
    def _bn_stats_backward(grad_out, activations, saved, spec):
        return _C.bn_stats_backward_cpu(grad_out, list(activations), saved, *_bn_spec_args(spec))


# Integer GEMM / conv (qgemm, qconv2d_nhwc, int_mm): registered by their own module.
from . import cpu_int  # noqa: E402,F401
