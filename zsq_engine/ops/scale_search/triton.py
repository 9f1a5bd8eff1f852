"""The scale search on Triton (``kernels/scale_search.py::scale_search``); nothing without Triton."""
from __future__ import annotations

from ..dispatch import register

try:
    from zsq_engine.kernels import scale_search as _kernels
except ImportError:  # no Triton on this machine
    _kernels = None

if _kernels is not None:
    register("scale_search", "triton")(_kernels.scale_search)
