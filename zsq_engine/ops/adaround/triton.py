"""The AdaRound primitives on Triton (``kernels/adaround.py``, launchers of the same names).

Registers nothing when Triton is missing."""
from __future__ import annotations

from ..dispatch import register

try:
    from zsq_engine.kernels import adaround as _kernels
except ImportError:  # no Triton on this machine
    _kernels = None

if _kernels is not None:
    for _name in ("adaround_forward", "adaround_backward", "adaround_reg_forward", "adaround_reg_backward"):
        register(_name, "triton")(getattr(_kernels, _name))
