"""Synthesis-free zero-shot quantization: methods that read only the weights (and BN statistics).

* :func:`dfq` - Data-Free Quantization (Nagel et al., ICCV 2019): cross-layer equalisation and
  high-bias absorption, returning an equivalent float model (BNs kept, so their statistics
  remain for :func:`bias_correct`, which runs on the quantized model).
* SQuant rounding lives in :mod:`zsq_engine.quant.squant` (a weight quantizer, not a model pass).

Typical use::

    fmodel = dfq(model)                              # float, equivalent to model
    qmodel = quantize_model(fmodel, 8, 8)            # folds BN, calibrates weights
    bias_correct(qmodel, fmodel)                     # analytic, no data
    calibrate_activations(qmodel, batches)
"""
from __future__ import annotations

import copy

from torch import nn

from .absorb import NUM_SIGMAS, absorb_high_bias, absorbable_shift
from .act_ranges import bn_activation_ranges, set_bn_activation_ranges
from .bias_correction import bias_correct, clipped_normal_moments, expected_layer_inputs, expected_layer_stats
from .clamp import ChannelClamp, restore_channel_clamps
from .equalize import RELU6_POLICIES, cross_layer_equalize, equalization_scales
from .graph import EqualizationPair, find_equalization_pairs

__all__ = ["dfq", "relu6_replaced", "replace_relu6", "cross_layer_equalize", "absorb_high_bias", "absorbable_shift", "bias_correct",
           "clipped_normal_moments", "expected_layer_inputs", "expected_layer_stats", "bn_activation_ranges",
           "set_bn_activation_ranges", "equalization_scales", "find_equalization_pairs",
           "EqualizationPair", "ChannelClamp", "restore_channel_clamps", "RELU6_POLICIES", "NUM_SIGMAS"]


def dfq(model: nn.Module, *, relu6: str = "clamp", absorb_bias: bool = True, num_sigmas: float = NUM_SIGMAS,
        max_sweeps: int = 50, inplace: bool = False, return_pairs: bool = False, per_channel_weights: bool = False):
    """Cross-layer equalisation, then high-bias absorption: a float model ready for quantization.

    Args:
        model: float model with its BatchNorm layers (eval-mode semantics); must be traceable
            by ``torch.fx``.
        relu6: ReLU6 policy of :func:`cross_layer_equalize`: 'clamp' (exact, per-channel clamp
            modules, lowered by the integer runtime as per-channel code clips), 'relu' (the paper), 'auto' (ReLU where BN
            says the clip is inactive, else skip: runtime-lowerable) or 'skip'.
        absorb_bias: also absorb high biases (needs BN statistics; see :mod:`.absorb`).
        num_sigmas: ``c = max(0, beta - num_sigmas |gamma|)``.
        max_sweeps: equalisation passes at most.
        inplace: modify ``model`` instead of a deep copy.
        return_pairs: also return the :class:`EqualizationPair` list that was equalised.
        per_channel_weights: weights will be quantized per output channel: leave the pairs whose
            grids equalisation cannot change (depthwise second layers; see
            :func:`.equalize.grids_invariant`). False: every pair (the paper's per-tensor setting).
    Returns:
        The transformed model in ``model``'s train/eval mode (with ``return_pairs``: ``(model,
        pairs)``). Equalisation alone is exact up to
        float rounding (with ``relu6='relu'`` / ``'auto'``: relative to the model whose equalised
        ReLU6s are ReLUs); absorption is exact where the 3-sigma assumption holds, away from
        padded borders.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    model, pairs = cross_layer_equalize(model, relu6=relu6, max_sweeps=max_sweeps, inplace=True,
                                        per_channel_weights=per_channel_weights)
    if absorb_bias:
        absorb_high_bias(model, pairs, num_sigmas)
    return (model, pairs) if return_pairs else model


def relu6_replaced(before: nn.Module, after: nn.Module) -> list:
    """Names of the ``nn.ReLU6`` modules of ``before`` that are plain ``nn.ReLU`` in ``after``
    (what ``dfq(..., relu6='relu')`` changed; saved with a model so it can be rebuilt)."""
    mods = dict(after.named_modules())
    return [n for n, m in before.named_modules()
            if isinstance(m, nn.ReLU6) and isinstance(mods.get(n), nn.ReLU) and not isinstance(mods.get(n), nn.ReLU6)]


def replace_relu6(model: nn.Module, names) -> nn.Module:
    """Turn the named ``nn.ReLU6`` modules of ``model`` into ``nn.ReLU`` in place (see :func:`relu6_replaced`)."""
    from ..quant.graph import replace_module

    for name in names:
        if not isinstance(model.get_submodule(name), nn.ReLU6):
            raise ValueError(f"module {name!r} is not an nn.ReLU6")
        replace_module(model, name, nn.ReLU())
    return model
