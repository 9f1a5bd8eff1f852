"""Reference BatchNorm-statistics loss (the objective of BN-statistics data synthesis): the oracle
of every kernel of the bn_stats family.

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

from typing import Sequence

import torch

from ...opspec.bn_loss import VARIANTS, BNLossSpec  # noqa: F401  (re-exported: the specs computed here)


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


# ----------------------------------------------------------------------------- primitives
#
# The fused kernels and the custom op ``zsq::bn_stat_loss`` work on *groups*: one group per
# channel (per-batch statistics) or per (image, channel) (per-image), numbered layer by layer,
# and within a layer ``c`` (per batch) or ``n * C + c`` (per image). The loss is
# ``r * sum_l w_l * sum_{g in l} d2_g`` with ``w_l`` the layer's normalisation and ``r`` the layer
# reduction (1 or 1/L). Its derivative with respect to an element ``a`` of group ``g`` is affine
# in ``a``:
#
#   d loss / d a = A_g + B_g * (a - mean_g),   A_g = r w_l * 2 (mean_g - rm_c) / count
#   B_g = r w_l * 4 (var_g - rv_c) / (count - corr)                          (variance compared)
#   B_g = r w_l * 2 (spread_g - t_c) / (spread_g * (count - corr))          (std compared)
#
# (spread = sqrt(var + eps_in), t = sqrt(rv + std_eps)). Every forward primitive returns the
# loss and ``saved`` = fp32 [3, G] rows (mean_g, A_g, B_g) for grad_out = 1; every backward
# primitive multiplies them by grad_out. The layout is shared by all backends.

NORMALIZE_CODES = {"channels": 0, "batch": 1, "mean": 2}


def layer_weight(shape, spec: BNLossSpec) -> float:
    """``w_l``: the per-layer normalisation of the summed squared distances."""
    n, c = int(shape[0]), int(shape[1])
    if spec.normalize == "channels":
        return 1.0 / c
    if spec.normalize == "batch":
        return 1.0 / n if spec.per_image else 1.0
    return 1.0 / (n * c if spec.per_image else c)


def group_count(shape, spec: BNLossSpec) -> int:
    """Values per statistic (``count``)."""
    spatial = int(shape[2]) * int(shape[3]) if len(shape) == 4 else 1
    return spatial if spec.per_image else spatial * int(shape[0])


def num_groups(shape, spec: BNLossSpec) -> int:
    return int(shape[0]) * int(shape[1]) if spec.per_image else int(shape[1])


def bn_stats_forward(activations: Sequence[torch.Tensor], running_means: Sequence[torch.Tensor],
                     running_vars: Sequence[torch.Tensor], spec: BNLossSpec):
    """(loss fp32 0-dim, saved fp32 [3, G]); see the block comment above for ``saved``."""
    with torch.no_grad():
        loss = bn_stat_loss(activations, running_means, running_vars, spec)
        r = 1.0 if spec.layer_reduction == "sum" else 1.0 / len(activations)
        corr = 1 if spec.unbiased else 0
        rows = []
        for a, m, v in zip(activations, running_means, running_vars):
            mean, spread = activation_stats(a, spec)
            count = group_count(a.shape, spec)
            scale = r * layer_weight(a.shape, spec)
            coef_a = scale * 2.0 * (mean - m.float()) / count
            if spec.use_std:
                target = torch.sqrt(v.float() + spec.std_eps)
                coef_b = scale * 2.0 * (spread - target) / (spread * (count - corr))
            else:
                coef_b = scale * 4.0 * (spread - v.float()) / (count - corr)
            rows.append(torch.stack([mean.reshape(-1), coef_a.reshape(-1), coef_b.reshape(-1)]))
        saved = torch.cat(rows, dim=1).float().contiguous()
    return loss.float(), saved


def bn_stats_backward(grad_out: torch.Tensor, activations: Sequence[torch.Tensor], saved: torch.Tensor,
                      spec: BNLossSpec):
    """d loss / d activations[i] (dtype and shape of activations[i]) from ``saved``."""
    grads = []
    start = 0
    g = grad_out.float()
    for a in activations:
        n, c = int(a.shape[0]), int(a.shape[1])
        groups = num_groups(a.shape, spec)
        mean, coef_a, coef_b = (saved[k, start:start + groups] for k in range(3))
        start += groups
        view = (n, c, 1) if spec.per_image else (1, c, 1)
        x = a.detach().float().reshape(n, c, -1)
        d = g * (coef_a.reshape(view) + coef_b.reshape(view) * (x - mean.reshape(view)))
        grads.append(d.to(a.dtype).reshape(a.shape))
    return grads
