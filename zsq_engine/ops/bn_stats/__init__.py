"""The BN-statistics loss op family: ``bn_stat_loss`` (the objective of BN-statistics data
synthesis; variants in :mod:`zsq_engine.opspec.bn_loss`).

This file: the public function (checks, then the op). ``library.py``: the torch.library ops and
their autograd; ``reference.py``: the oracle; ``cpu.py`` / ``triton.py``: the kernels per
backend (docs/architecture.md).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

from ...opspec import checks
from ..dispatch import add_backend_modules
from . import library
from .reference import VARIANTS, BNLossSpec

add_backend_modules(f"{__name__}.cpu", f"{__name__}.triton")

__all__ = ["BNLossSpec", "bn_stat_loss", "resolve_bn_loss_spec"]


def resolve_bn_loss_spec(variant: Union[str, BNLossSpec]) -> BNLossSpec:
    if isinstance(variant, BNLossSpec):
        spec = variant
    elif variant in VARIANTS:
        spec = VARIANTS[variant]
    else:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)} or a BNLossSpec, got {variant!r}")
    if spec.normalize not in ("channels", "batch", "mean"):
        raise ValueError(f"BNLossSpec.normalize must be 'channels', 'batch' or 'mean', got {spec.normalize!r}")
    if spec.layer_reduction not in ("sum", "mean"):
        raise ValueError(f"BNLossSpec.layer_reduction must be 'sum' or 'mean', got {spec.layer_reduction!r}")
    return spec


def bn_stat_loss(activations: Sequence[torch.Tensor], running_means: Sequence[torch.Tensor],
                 running_vars: Sequence[torch.Tensor], variant: Union[str, BNLossSpec] = "genie") -> torch.Tensor:
    """Distance between the statistics of BN inputs and the BN running statistics (fp32 scalar).

    ``activations[i]``: [N, C_i, H, W] or [N, C_i] in fp32/fp16/bf16 (the input of BN layer i);
    ``running_means[i]`` / ``running_vars[i]``: [C_i]. ``variant``: 'genie', 'zeroq', 'gdfq',
    'hast' or a :class:`BNLossSpec`. Differentiable with respect to the activations.
    """
    spec = resolve_bn_loss_spec(variant)
    if not (len(activations) == len(running_means) == len(running_vars)) or not activations:
        raise ValueError(f"activations, running_means and running_vars must be non-empty lists of one length, "
                         f"got {len(activations)}, {len(running_means)}, {len(running_vars)}")
    for i, (a, m, v) in enumerate(zip(activations, running_means, running_vars)):
        checks.check_float_tensor(f"activations[{i}]", a)
        if a.dim() not in (2, 4):
            raise ValueError(f"activations[{i}] must be [N, C, H, W] or [N, C], got shape {tuple(a.shape)}")
        for name, t in ((f"running_means[{i}]", m), (f"running_vars[{i}]", v)):
            checks.check_tensor(name, t, checks.PARAM_DTYPES)
            if t.shape != (a.shape[1],):
                raise ValueError(f"{name} must have shape [{a.shape[1]}] (channels of activations[{i}]), "
                                 f"got {tuple(t.shape)}")
            checks.check_same_device(f"activations[{i}]", a, name, t)
        spatial = a.shape[2] * a.shape[3] if a.dim() == 4 else 1
        count = spatial if spec.per_image else spatial * a.shape[0]
        if spec.unbiased and count < 2:
            raise ValueError(f"activations[{i}] has {count} value(s) per statistic; the unbiased variance of "
                             f"variant {variant!r} needs at least 2")
    loss, _saved = library.bn_stat_loss_op(list(activations), list(running_means), list(running_vars),
                                           *library._spec_scalars(spec))
    return loss
