"""The QDrop mix on Triton (``kernels/qdrop_mix.py::qdrop_mix``); nothing without Triton."""
from __future__ import annotations

from ..dispatch import register

try:
    from zsq_engine.kernels import qdrop_mix as _kernels
except ImportError:  # no Triton on this machine
    _kernels = None

if _kernels is not None:
    register("qdrop_mix", "triton")(_kernels.qdrop_mix)
