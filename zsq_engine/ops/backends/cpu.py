"""CPU kernels of the C++ extension (``zsq_engine._C``), registered under the 'cpu' backend.

Each fused fake-quant primitive (see :mod:`zsq_engine.ops.library`) maps to one ``_C`` function
with the reference primitive's arguments. The kernels take float32 / float16 / bfloat16
tensors; the few argument combinations they do not cover (float64 tensors, AdaRound weights and
logits of different dtypes) are passed to the reference primitive, which defines the result
for them (type promotion), so dispatch never fails on a valid input.
"""
from __future__ import annotations

import torch as _torch

from zsq_engine._ext import get_extension

from ..dispatch import register

_C = get_extension()

if _C is not None and hasattr(_C, "pack_int4_cpu"):
    register("pack_int4", "cpu")(_C.pack_int4_cpu)

    @register("unpack_int4", "cpu")
    def _unpack_int4(packed, k, signed):
        return _C.unpack_int4_cpu(packed, k, signed)


def _register_fake_quant() -> None:
    import torch

    from ..reference import adaround as _ref_ada
    from ..reference import fake_quant as _ref_fq
    from ..reference import qdrop as _ref_qdrop
    from ..reference import scale_search as _ref_search

    kernel_dtypes = (torch.float32, torch.float16, torch.bfloat16)

    # primitive -> (_C kernel, reference primitive, how many leading tensor arguments must share
    # one kernel dtype); the arguments are passed through unchanged
    table = {
        "fq_forward": (_C.fq_forward_cpu, _ref_fq.fq_forward, 1),
        "fq_backward": (_C.fq_backward_cpu, _ref_fq.fq_backward, 2),
        "lsq_backward": (_C.lsq_backward_cpu, _ref_fq.lsq_backward, 2),
        "qdrop_fq_forward": (_C.qdrop_fq_forward_cpu, _ref_qdrop.qdrop_fq_forward, 1),
        "qdrop_fq_backward": (_C.qdrop_fq_backward_cpu, _ref_qdrop.qdrop_fq_backward, 2),
        "qdrop_lsq_backward": (_C.qdrop_lsq_backward_cpu, _ref_qdrop.qdrop_lsq_backward, 2),
        "adaround_forward": (_C.adaround_forward_cpu, _ref_ada.adaround_fake_quant, 2),
        "adaround_backward": (_C.adaround_backward_cpu, _ref_ada.adaround_backward, 3),
        "adaround_reg_forward": (_C.adaround_reg_forward_cpu, _ref_ada.adaround_reg_forward, 1),
        "scale_search": (_C.scale_search_cpu, _ref_search.scale_search, 1),
    }
    if hasattr(_C, "qdrop_mix_cpu"):  # an extension built before this kernel existed lacks it
        table["qdrop_mix"] = (_C.qdrop_mix_cpu, _ref_qdrop.qdrop_mix, 2)

    def make(kernel, reference, n_tensors):
        def primitive(*args, **kwargs):
            dtype = args[0].dtype
            if dtype not in kernel_dtypes or any(a.dtype != dtype for a in args[1:n_tensors]):
                return reference(*args, **kwargs)
            return kernel(*args, **kwargs)

        primitive.__name__ = kernel.__name__
        primitive.__doc__ = kernel.__doc__
        return primitive

    for name, (kernel, reference, n_tensors) in table.items():
        register(name, "cpu")(make(kernel, reference, n_tensors))

    @register("adaround_reg_backward", "cpu")
    def _adaround_reg_backward(grad_out, alpha, beta):
        if alpha.dtype not in kernel_dtypes:
            return _ref_ada.adaround_reg_backward(grad_out, alpha, beta)
        return _C.adaround_reg_backward_cpu(grad_out, alpha, beta)


if _C is not None and hasattr(_C, "fq_forward_cpu"):
    _register_fake_quant()


if _C is not None and hasattr(_C, "self_attention_forward_cpu"):
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


if _C is not None and hasattr(_C, "bn_stats_forward_cpu"):
    @register("bn_stats_forward", "cpu")
    def _bn_stats_forward(activations, running_means, running_vars, spec):
        return _C.bn_stats_forward_cpu(list(activations), list(running_means), list(running_vars),
                                       *_bn_spec_args(spec))

    @register("bn_stats_backward", "cpu")
    def _bn_stats_backward(grad_out, activations, saved, spec):
        return _C.bn_stats_backward_cpu(grad_out, list(activations), saved, *_bn_spec_args(spec))


# Integer GEMM / conv (qgemm, qconv2d_nhwc, int_mm): registered by their own module.
from . import cpu_int  # noqa: E402,F401
