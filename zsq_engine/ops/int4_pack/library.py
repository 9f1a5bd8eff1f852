"""The torch.library ops of the int4 packing family: ``zsq::pack_int4`` and ``zsq::unpack_int4``
(:func:`..schema.define_op`). The same names in ``reference.py``, ``csrc/bind/int4_pack.cpp``
(``_C.pack_int4_cpu`` / ``_cuda``, ``_C.unpack_int4_cpu`` / ``_cuda``)."""
from __future__ import annotations

import torch

from ..dispatch import register
from ..schema import define_op
from . import reference as _ref

register("pack_int4", "reference")(_ref.pack_int4)
register("unpack_int4", "reference")(_ref.unpack_int4)

PACK_INT4 = define_op("pack_int4", "(Tensor x) -> Tensor", _ref.pack_int4,
                      lambda x: x.new_empty((*x.shape[:-1], (x.shape[-1] + 1) // 2), dtype=torch.uint8))
UNPACK_INT4 = define_op("unpack_int4", "(Tensor packed, int k, bool signed) -> Tensor", _ref.unpack_int4,
                        lambda packed, k, signed: packed.new_empty(
                            (*packed.shape[:-1], k), dtype=torch.int8 if signed else torch.uint8))
PRIMITIVES = (PACK_INT4, UNPACK_INT4)
