"""Triton kernels (``zsq_engine.kernels``), registered under the 'triton' backend.

Importing this module must not fail without Triton: kernels are registered only when Triton
and the kernel modules import. The launchers take exactly the arguments of the reference
primitives (see :mod:`zsq_engine.ops.library`).
"""
from __future__ import annotations

import importlib

from ..dispatch import register

# primitive name -> (kernel module, launcher name)
_LAUNCHERS = {
    "fq_forward": ("fake_quant", "fake_quant_forward"),
    "fq_backward": ("fake_quant", "fake_quant_backward"),
    "lsq_backward": ("fake_quant", "lsq_backward"),
    "qdrop_fq_forward": ("fake_quant", "qdrop_fake_quant_forward"),
    "qdrop_fq_backward": ("fake_quant", "qdrop_fake_quant_backward"),
    "qdrop_lsq_backward": ("fake_quant", "qdrop_lsq_backward"),
    "adaround_forward": ("adaround", "adaround_forward"),
    "adaround_backward": ("adaround", "adaround_backward"),
    "adaround_reg_forward": ("adaround", "adaround_reg_forward"),
    "adaround_reg_backward": ("adaround", "adaround_reg_backward"),
    "scale_search": ("scale_search", "scale_search"),
    "int_mm": ("int_gemm", "int_mm"),
    "bn_stats_forward": ("bn_stats", "bn_stats_forward"),
    "bn_stats_backward": ("bn_stats", "bn_stats_backward"),
}


def _register_all() -> None:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return
    for primitive, (module_name, launcher) in _LAUNCHERS.items():
        try:
            module = importlib.import_module(f"zsq_engine.kernels.{module_name}")
        except ImportError:
            continue
        fn = getattr(module, launcher, None)
        if fn is not None:
            register(primitive, "triton")(fn)


_register_all()
