"""The torch.library op of the scale-search family: the primitive ``zsq::scale_search``
(:func:`..schema.define_op`; no gradient). The same name in ``reference.py``,
``kernels/scale_search.py`` and ``csrc/bind/scale_search.cpp`` (``_C.scale_search_cpu``)."""
from __future__ import annotations

import torch

from ..dispatch import register
from ..schema import define_op
from . import reference as _ref


def _fake(x, quant_min, quant_max, axis, num_candidates, p, symmetric):
    channels = 1 if axis is None else x.shape[axis]
    return x.new_empty((channels,), dtype=torch.float32), x.new_empty((channels,), dtype=torch.float32)


register("scale_search", "reference")(_ref.scale_search)
SCALE_SEARCH = define_op("scale_search", "(Tensor x, int quant_min, int quant_max, int? axis, int num_candidates, "
                         "float p, bool symmetric) -> (Tensor, Tensor)", _ref.scale_search, _fake)
PRIMITIVES = (SCALE_SEARCH,)
