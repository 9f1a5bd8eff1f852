"""The BN-statistics loss primitives on Triton (``kernels/bn_stats.py``, launchers of the same
names); nothing without Triton."""
from __future__ import annotations

from ..dispatch import register

try:
    from zsq_engine.kernels import bn_stats as _kernels
except ImportError:  # no Triton on this machine
    _kernels = None

if _kernels is not None:
    for _name in ("bn_stats_forward", "bn_stats_backward"):
        register(_name, "triton")(getattr(_kernels, _name))
