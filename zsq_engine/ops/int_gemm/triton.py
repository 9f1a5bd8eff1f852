"""The integer GEMM on Triton (``kernels/int_gemm.py``): ``int_mm``, and ``qgemm`` by weight /
activation format (``int8_gemm`` W8A8, ``w4a8_gemm`` with packed int4 weights, ``w4a4_gemm`` with
both packed). Nothing without Triton."""
from __future__ import annotations

from ..dispatch import register

try:
    from zsq_engine.kernels import int_gemm as _kernels
except Exception:  # no Triton on this machine
    _kernels = None


def _qgemm(a, w, epilogue, w_packed, a_packed, a_signed, k):
    if a_packed:
        if not w_packed:
            raise NotImplementedError("packed int4 activations need packed int4 weights (W4A4)")
        return _kernels.w4a4_gemm(a, w, k, epilogue, a_signed=a_signed)
    if w_packed:
        return _kernels.w4a8_gemm(a, w, epilogue)
    return _kernels.int8_gemm(a, w, epilogue)


if _kernels is not None:
    register("int_mm", "triton")(_kernels.int_mm)
    register("qgemm", "triton")(_qgemm)
