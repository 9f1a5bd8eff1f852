"""Reference BatchNorm-statistics loss (the objective of BN-statistics data synthesis).

For each hooked BN layer, the statistics of its input activation (fp32) are compared with the
layer's running statistics. The variants of the literature, as :class:`BNLossSpec` presets:

============  ===========  ======================  ===================================  ==========
variant       statistics   compared quantities     per-layer distance                   layers
============  ===========  ======================  ===================================  ==========
``genie``     per batch    mean, std (unbiased)    (||dmean||^2 + ||dstd||^2) / C        sum
``zeroq``     per image    mean, sqrt(var_u + eps) (||dmean||_F^2 + ||dstd||_F^2) / N    sum
``gdfq``      per batch    mean, var (biased)      mean_C(dmean^2) + mean_C(dvar^2)     mean
``hast``      as ``gdfq``
============  ===========  ======================  ===================================  ==========

Per batch = over (N, H, W); per image = over (H, W) for each image, the per-image statistics
are compared with the running statistics broadcast over the batch. The std targets are
``sqrt(running_var + eps)`` (eps = 1e-6 as in ZeroQ and Genie). ``var_u`` is the unbiased
variance. 2-D activations [N, C] (BatchNorm1d) have H = W = 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class BNLossSpec:
    per_image: bool = False        # statistics over (H, W) of each image instead of (N, H, W)
    use_std: bool = True           # compare std (True) or variance (False)
    unbiased: bool = True          # unbiased (N-1) variance estimate
    std_eps: float = 1e-6          # eps in sqrt(var + eps) for the targets (and per-image stds)
    eps_in_std: bool = False       # also add std_eps inside the activation's std (ZeroQ)
    normalize: str = "channels"    # per-layer distance: "channels" sum/C, "batch" sum/N, "mean" mean over C
    layer_reduction: str = "sum"   # "sum" or "mean" over layers


VARIANTS = {
    "genie": BNLossSpec(),
    "zeroq": BNLossSpec(per_image=True, eps_in_std=True, normalize="batch"),
    "gdfq": BNLossSpec(use_std=False, unbiased=False, normalize="mean", layer_reduction="mean"),
}
VARIANTS["hast"] = VARIANTS["gdfq"]


def activation_stats(act: torch.Tensor, spec: BNLossSpec):
    """(mean, spread) of one activation in fp32: shapes [C] per batch or [N, C] per image."""
    a = act.float()
    if a.dim() == 2:
        a = a[:, :, None, None]
    dims = (2, 3) if spec.per_image else (0, 2, 3)
    var, mean = torch.var_mean(a, dim=dims, correction=1 if spec.unbiased else 0)
    if not spec.use_std:
        return mean, var
    if spec.eps_in_std:
        return mean, torch.sqrt(var + spec.std_eps)
    return mean, torch.sqrt(var)


def layer_loss(act: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
               spec: BNLossSpec) -> torch.Tensor:
    mean, spread = activation_stats(act, spec)
    target_spread = torch.sqrt(running_var.float() + spec.std_eps) if spec.use_std else running_var.float()
    d2 = (mean - running_mean.float()).pow(2) + (spread - target_spread).pow(2)
    if spec.normalize == "channels":
        return d2.sum() / d2.shape[-1]
    if spec.normalize == "batch":
        return d2.sum() / (d2.shape[0] if spec.per_image else 1)
    return d2.mean()


def bn_stat_loss(activations: Sequence[torch.Tensor], running_means: Sequence[torch.Tensor],
                 running_vars: Sequence[torch.Tensor], spec: BNLossSpec) -> torch.Tensor:
    losses = torch.stack([layer_loss(a, m, v, spec) for a, m, v in zip(activations, running_means, running_vars)])
    return losses.sum() if spec.layer_reduction == "sum" else losses.mean()
