"""The integer epilogue as the op layer exports it: the description (:mod:`zsq_engine.opspec.epilogue`,
shared with the kernels) and its float64 reference (:mod:`zsq_engine.ops.reference.epilogue`)."""
from ..opspec.dtypes import ACTIVATIONS, FLOAT_OUT_DTYPES, OUT_DTYPES, QUANT_OUT_DTYPES
from ..opspec.epilogue import Epilogue, ScalarOrTensor
from .reference.epilogue import (apply_reference, conv_product_reference, dequant_reference, finish_reference,
                                 zero_point_product_reference)

__all__ = ["ACTIVATIONS", "FLOAT_OUT_DTYPES", "OUT_DTYPES", "QUANT_OUT_DTYPES", "Epilogue", "ScalarOrTensor",
           "apply_reference", "conv_product_reference", "dequant_reference", "finish_reference",
           "zero_point_product_reference"]
