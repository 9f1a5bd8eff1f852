"""Reference int4 packing: the format's own definition (:mod:`zsq_engine.opspec.int4`, which the
kernels unpack with too), used as the oracle of ``pack_int4`` / ``unpack_int4``."""
from __future__ import annotations

from ...opspec.int4 import pack_int4, unpack_int4

__all__ = ["pack_int4", "unpack_int4"]
