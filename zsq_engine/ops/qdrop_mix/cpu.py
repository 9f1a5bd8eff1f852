"""The QDrop mix on the C++ extension (``_C.qdrop_mix_cpu``, csrc/bind/qdrop_mix.cpp); float64
or mixed dtypes go to the reference."""
from __future__ import annotations

from zsq_engine._ext import get_extension

from ..dispatch import register
from ..fake_quant.cpu import kernel_or_reference
from . import reference

_C = get_extension()

if _C is not None:
    register("qdrop_mix", "cpu")(kernel_or_reference(_C.qdrop_mix_cpu, reference.qdrop_mix, 2))
