"""int4 packing on the C++ extension (``_C.pack_int4_cpu`` / ``_C.unpack_int4_cpu``,
csrc/bind/int4_pack.cpp); nothing without the extension."""
from __future__ import annotations

from zsq_engine._ext import get_extension

from ..dispatch import register

_C = get_extension()

if _C is not None:
    register("pack_int4", "cpu")(_C.pack_int4_cpu)

    @register("unpack_int4", "cpu")
    def _unpack_int4(packed, k, signed):
        return _C.unpack_int4_cpu(packed, k, signed)
