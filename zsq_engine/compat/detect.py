"""Recognise the quantizer classes of the common research codebases by their attributes.

No project is imported: a module is matched by the attributes (and for torch.ao, the class) it
carries. :func:`detect` answers ``(style, None)`` for a module we accelerate, ``(None, reason)``
for a quantizer we recognise or suspect but leave alone, and ``(None, None)`` for anything else.
The styles and what their forwards compute are documented in :mod:`.brecq`, :mod:`.qdrop`,
:mod:`.genie` and :mod:`.torch_ao`.
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

from torch import nn

# style name -> attributes a module must carry
_ATTRS = {
    "genie_weight": ("n_bits", "x_floor", "bit_logit", "scale", "zero_point", "train_mode"),
    "genie_activation": ("n_bits", "scale", "initialized", "signed", "train_mode"),
    "brecq_adaround": ("alpha", "soft_targets", "delta", "zero_point", "n_levels"),
    "brecq_uniform": ("n_bits", "sym", "channel_wise", "delta", "zero_point", "n_levels", "inited"),
    "qdrop": ("scale", "zero_point", "quant_min", "quant_max", "ch_axis", "drop_prob", "observer_enabled",
              "fake_quant_enabled"),
}
GAMMA, ZETA = -0.1, 1.1
_QUANTIZER_NAME = re.compile(r"quant|round", re.IGNORECASE)
_OWN = {"UniformQuantizer", "AdaRoundWeightQuantizer", "LSQActQuantizer"}


def _has(module, style: str) -> bool:
    return all(hasattr(module, a) for a in _ATTRS[style])


def _sigmoid_reason(gamma, zeta) -> Optional[str]:
    if gamma != GAMMA or zeta != ZETA:
        return (f"rectified sigmoid with gamma={gamma}, zeta={zeta}: the fused AdaRound kernels are built for "
                f"gamma={GAMMA}, zeta={ZETA}")
    return None


def _torch_ao(module) -> Optional[Tuple[Optional[str], Optional[str]]]:
    from torch.ao.quantization import FakeQuantize, FakeQuantizeBase
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    for cls, style in ((FakeQuantize, "torch_ao_fake_quantize"), (_LearnableFakeQuantize, "torch_ao_learnable")):
        if isinstance(module, cls):
            if type(module).forward is not cls.forward:
                return None, f"subclass of {cls.__name__} with its own forward ({type(module).__name__})"
            return style, None
    if isinstance(module, FakeQuantizeBase):
        return None, f"torch.ao fake-quant class {type(module).__name__} is not supported (its forward is its own)"
    return None


def detect(module: nn.Module) -> Tuple[Optional[str], Optional[str]]:
    """``(style, None)``, ``(None, reason it is left alone)`` or ``(None, None)`` (not a quantizer)."""
    cls = type(module)
    if cls.__name__ in _OWN and cls.__module__.startswith("zsq_engine."):
        return None, "zsq_engine quantizer: already runs on the fused ops"
    ao = _torch_ao(module)
    if ao is not None:
        return ao
    if _has(module, "genie_weight"):
        sig = getattr(module, "sigmoid", None)
        reason = _sigmoid_reason(getattr(sig, "gamma", GAMMA), getattr(sig, "zeta", ZETA))
        return (None, reason) if reason else ("genie_weight", None)
    if _has(module, "genie_activation"):
        return "genie_activation", None
    if _has(module, "brecq_adaround"):
        reason = _sigmoid_reason(getattr(module, "gamma", GAMMA), getattr(module, "zeta", ZETA))
        return (None, reason) if reason else ("brecq_adaround", None)
    if _has(module, "brecq_uniform"):
        return "brecq_uniform", None
    if _has(module, "qdrop"):
        if hasattr(module, "adaround") or hasattr(module, "alpha"):
            return None, "QDrop AdaRoundFakeQuantize is not supported (its forward is left unchanged)"
        if isinstance(module.scale, nn.Parameter):
            if not hasattr(module, "use_grad_scaling") or not hasattr(module, "eps"):
                return None, "QDrop-like learnable quantizer without use_grad_scaling / eps"
            return ("qdrop_lsq_plus" if isinstance(module.zero_point, nn.Parameter) else "qdrop_lsq"), None
        return "qdrop_fixed", None
    return None, None


def looks_like_quantizer(module: nn.Module) -> bool:
    """An unknown class whose name says it quantizes or rounds (torch's own stubs excluded)."""
    cls = type(module)
    return bool(_QUANTIZER_NAME.search(cls.__name__)) and not cls.__module__.startswith("torch.")
