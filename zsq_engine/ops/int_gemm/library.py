"""The torch.library ops of the integer GEMM family: ``zsq::qgemm`` and ``zsq::int_mm``
(:func:`..schema.define_op`). The epilogue crosses the schema as ``EPILOGUE_SCHEMA``'s typed
arguments (:mod:`zsq_engine.opspec.epilogue`). The same names in ``reference.py``,
``kernels/int_gemm.py`` and ``csrc/bind/int_gemm.cpp``."""
from __future__ import annotations

import torch

from ...opspec.epilogue import (EPILOGUE_ARG_COUNT, EPILOGUE_SCHEMA, epilogue_from_schema_args,
                                 schema_out_dtype)
from ..dispatch import register
from ..schema import define_op
from . import reference as _ref

register("qgemm", "reference")(_ref.qgemm)
register("int_mm", "reference")(_ref.int_mm)


def _qgemm_primitive_args(a, w, *rest):
    ep_args, (w_packed, a_packed, a_signed, k) = rest[:EPILOGUE_ARG_COUNT], rest[EPILOGUE_ARG_COUNT:]
    return a, w, epilogue_from_schema_args(ep_args), w_packed, a_packed, a_signed, k


def _qgemm_fake(a, w, *rest):
    return a.new_empty((a.shape[0], w.shape[0]), dtype=schema_out_dtype(rest[:EPILOGUE_ARG_COUNT]))


QGEMM = define_op("qgemm", f"(Tensor a, Tensor w, {EPILOGUE_SCHEMA}, bool w_packed, bool a_packed, bool a_signed, "
                  "int k) -> Tensor", _ref.qgemm, _qgemm_fake, _qgemm_primitive_args)
INT_MM = define_op("int_mm", "(Tensor a, Tensor b) -> Tensor", _ref.int_mm,
                   lambda a, b: a.new_empty((a.shape[0], b.shape[1]), dtype=torch.int32))
PRIMITIVES = (QGEMM, INT_MM)
