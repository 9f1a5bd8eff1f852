"""The scale search on the C++ extension (``_C.scale_search_cpu``, csrc/bind/scale_search.cpp);
float64 ``x`` goes to the reference."""
from __future__ import annotations

from zsq_engine._ext import get_extension

from ..dispatch import register
from ..fake_quant.cpu import kernel_or_reference
from . import reference

_C = get_extension()

if _C is not None:
    register("scale_search", "cpu")(kernel_or_reference(_C.scale_search_cpu, reference.scale_search, 1))
