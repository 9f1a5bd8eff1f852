"""Forward hooks that keep the outputs of named submodules (stage / residual-block features).

Teacher and student share module names (quantization wraps layers in place, BN folding turns a
BN into ``nn.Identity``), so one list of names taps both models at matching points.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from ..utils import ModuleRecorder

__all__ = ["FeatureTaps", "stage_names", "block_names"]


def stage_names(model: nn.Module) -> List[str]:
    """Names of the model's top-level ``layer1``, ``layer2``, ... stages (ResNet naming).

    ZAQ's intermediate discrepancy uses the stage outputs; models without such stages need the
    names passed explicitly.
    """
    names = [n for n, _ in model.named_children() if n.startswith("layer") and n[5:].isdigit()]
    return sorted(names, key=lambda n: int(n[5:]))


def block_names(model: nn.Module) -> List[str]:
    """Names of every residual block (ResNet BasicBlock / Bottleneck, MobileNetV2 InvertedResidual,
    EfficientNet MBConv; extendable through :func:`zsq_engine.recon.register_block_type`), in
    registration order: HAST aligns the channel attention of their outputs."""
    from ..models.roles import is_block

    return [n for n, m in model.named_modules() if n and is_block(m)]


class FeatureTaps(ModuleRecorder):
    """``with FeatureTaps(model, names) as taps: model(x); feats = taps.features()``.

    ``features()`` returns the outputs of the named modules from the last forward, in the order
    of ``names``, still attached to the autograd graph (detach them yourself where needed).
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        names = list(names)
        if not names:
            raise ValueError("names must list at least one submodule to tap")
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"feature layers {missing} are not submodules of {type(model).__name__}")
        super().__init__(modules[n] for n in names)
        self.names = names

    def features(self) -> List[torch.Tensor]:
        missing = [self.names[i] for i in self._missing()]
        if missing:
            raise RuntimeError(f"feature layers {missing} produced no output in the last forward")
        out = list(self._values)
        self.clear()  # the next forward must fill them again; drop graph references now
        return out
