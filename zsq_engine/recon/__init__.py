"""Block reconstruction post-training quantization: BRECQ, QDrop and Genie-M.

    from zsq_engine.recon import reconstruct_model
    result = reconstruct_model(model, images, wbits=4, abits=4, method="genie", preset="fast")
    qmodel = result.model   # an ordinary quantize_model()-style model, hard-rounded weights

Modules: :mod:`.blocks` (partition into units), :mod:`.quantizers` (AdaRound / LSQ+QDrop
quantizers on the fused ops), :mod:`.reconstruct` (the per-unit optimisation), :mod:`.io`
(saving / loading quantized models).
"""
from .blocks import BLOCK_TYPES, Unit, format_units, partition, register_block_type
from .io import load_quantized, save_quantized
from .quantizers import AdaRoundWeightQuantizer, LSQActQuantizer, bake_act, bake_weight
from .reconstruct import (METHODS, PRESETS, ReconConfig, ReconResult, UnsupportedUnitError, capture_unit_io, make_config,
                          reconstruct_model, reconstruct_unit, unit_mse)

__all__ = ["BLOCK_TYPES", "Unit", "format_units", "partition", "register_block_type", "AdaRoundWeightQuantizer",
           "LSQActQuantizer", "bake_act", "bake_weight", "METHODS", "PRESETS", "ReconConfig", "ReconResult",
           "UnsupportedUnitError", "capture_unit_io", "make_config", "reconstruct_model", "reconstruct_unit", "unit_mse", "load_quantized",
           "save_quantized"]
