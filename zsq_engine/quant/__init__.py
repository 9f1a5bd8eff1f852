"""Quantization layer: quantizers, calibration observers, Quant* modules, BN folding, model wrapping.

Typical use (naive post-training quantization)::

    from zsq_engine.quant import naive_ptq, format_quant_layers
    qmodel = naive_ptq(model, calib_batches, wbits=4, abits=4)
    print(format_quant_layers(qmodel))

Everything here computes through the op layer (``zsq_engine.ops``: fake_quant, lsq_fake_quant,
scale_search, minmax_qparams), so the fast kernels are used wherever they are available.
"""
from .bias_grid import snap_biases
from .bn_fold import find_conv_bn_pairs, fold_bn, fold_model_bn
from .calibration import (ACT_METHODS, OBSERVERS, WEIGHT_METHODS, MinMaxObserver, MSEObserver, Observer,
                          PercentileObserver, calibrate_weight, make_observer, qparams_from_minmax)
from .model import (QuantLayerInfo, calibrate_activations, format_quant_layers, list_quant_layers, naive_ptq,
                    quant_layers, quantize_model, set_quant_state)
from .modules import QuantConv2d, QuantLayer, QuantLinear, default_act_spec, default_weight_spec
from .protocol import GridQuantizer, IntegerGrid, QuantizerNotReady, WeightGridQuantizer
from .quantizer import MAX_BITS, MIN_BITS, SCALE_EPS, QuantSpec, UniformQuantizer, check_bits

__all__ = [
    "QuantSpec", "UniformQuantizer", "SCALE_EPS", "MIN_BITS", "MAX_BITS", "check_bits",
    "GridQuantizer", "WeightGridQuantizer", "IntegerGrid", "QuantizerNotReady",
    "Observer", "MinMaxObserver", "PercentileObserver", "MSEObserver", "OBSERVERS", "make_observer",
    "qparams_from_minmax", "calibrate_weight", "WEIGHT_METHODS", "ACT_METHODS",
    "QuantLayer", "QuantConv2d", "QuantLinear", "default_weight_spec", "default_act_spec",
    "fold_bn", "fold_model_bn", "find_conv_bn_pairs",
    "quantize_model", "calibrate_activations", "naive_ptq", "set_quant_state", "quant_layers",
    "QuantLayerInfo", "list_quant_layers", "format_quant_layers", "snap_biases",
]
