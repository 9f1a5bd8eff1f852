"""The fake-quant primitives on Triton (``kernels/fake_quant.py``, launchers of the same names).

Registers nothing when Triton is missing."""
from __future__ import annotations

from ..dispatch import register

try:
    from zsq_engine.kernels import fake_quant as _kernels
except ImportError:  # no Triton on this machine
    _kernels = None

if _kernels is not None:
    for _name in ("fq_forward", "fq_backward", "lsq_backward", "qdrop_fq_forward", "qdrop_fq_backward",
                  "qdrop_lsq_backward"):
        register(_name, "triton")(getattr(_kernels, _name))
