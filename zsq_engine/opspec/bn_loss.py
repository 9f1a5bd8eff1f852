"""The variants of the BatchNorm-statistics loss, as data (what each variant compares and how).

The computation they describe is in :mod:`zsq_engine.ops.bn_stats.reference` (the table of
variants is in its docstring); the Triton kernels read the same specs.
"""
from __future__ import annotations

from dataclasses import dataclass


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
