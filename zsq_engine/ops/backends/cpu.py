"""CPU kernels of the C++ extension (``zsq_engine._C``) for the ops not yet in a family folder
(int4 packing; the integer GEMM / conv in ``cpu_int``),
registered under the 'cpu' backend. The op families under ``zsq_engine/ops/<family>/`` register
their own in ``<family>/cpu.py``.
"""
from __future__ import annotations

from zsq_engine._ext import get_extension

from ..dispatch import register

_C = get_extension()

if _C is not None:
    register("pack_int4", "cpu")(_C.pack_int4_cpu)

    @register("unpack_int4", "cpu")
    def _unpack_int4(packed, k, signed):
        return _C.unpack_int4_cpu(packed, k, signed)


# Integer GEMM / conv (qgemm, qconv2d_nhwc, int_mm): registered by their own module.
from . import cpu_int  # noqa: E402,F401
