"""CPU kernels of the C++ extension (``zsq_engine._C``), registered under the 'cpu' backend."""
from __future__ import annotations

from zsq_engine._ext import get_extension

from ..dispatch import register

_C = get_extension()

if _C is not None and hasattr(_C, "pack_int4_cpu"):
    register("pack_int4", "cpu")(_C.pack_int4_cpu)

    @register("unpack_int4", "cpu")
    def _unpack_int4(packed, k, signed):
        return _C.unpack_int4_cpu(packed, k, signed)
