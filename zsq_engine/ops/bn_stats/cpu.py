"""The BN-statistics loss primitives on the C++ extension (``_C.<primitive>_cpu``,
csrc/bind/bn_stats.cpp); the spec crosses as plain scalars."""
from __future__ import annotations

from zsq_engine._ext import get_extension

from ..dispatch import register
from .library import _spec_scalars

_C = get_extension()

if _C is not None:
    @register("bn_stats_forward", "cpu")
    def bn_stats_forward(activations, running_means, running_vars, spec):
        return _C.bn_stats_forward_cpu(list(activations), list(running_means), list(running_vars),
                                       *_spec_scalars(spec))

    @register("bn_stats_backward", "cpu")
    def bn_stats_backward(grad_out, activations, saved, spec):
        return _C.bn_stats_backward_cpu(grad_out, list(activations), saved, *_spec_scalars(spec))
