"""Analytic bias correction (DFQ section 4.2): no data, only BatchNorm statistics.

Quantizing ``W`` to ``W_q = W + eps`` shifts the expected output of a layer by ``eps E[x]``;
subtracting it from the bias removes that biased error. ``E[x]`` per input channel comes from
the graph of the float model: a BN output of channel ``i`` is modelled as ``N(beta_i, gamma_i^2)``
and pushed through what follows it - ReLU / ReLU6 / ChannelClamp (moments of the clipped normal,
:func:`clipped_normal_moments`), identities and zero padding (unchanged; the border is ignored
as in the paper), residual adds (means and variances add, the branches taken as independent) and
a global average pool (mean unchanged, the per-pixel variance kept as an upper bound). Layers whose input cannot be reached this way (the
image, a max-pool, ...) are left uncorrected.
"""
from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ..quant.graph import try_symbolic_trace
from ..quant.modules import QuantLayer
from .absorb import weighted_channel_sum
from .graph import node_kind

__all__ = ["clipped_normal_moments", "expected_layer_inputs", "expected_layer_stats", "InputStats", "bias_correct"]



def _phi(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def clipped_normal_moments(mean: torch.Tensor, std: torch.Tensor, lower: float = 0.0,
                           upper=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(E[Y], Var[Y])`` of ``Y = clamp(X, lower, upper)`` with ``X ~ N(mean, std^2)`` (float64).

    ``upper`` is None (ReLU: no upper bound), a float (ReLU6: 6) or a per-channel tensor.
    Closed form: with ``a = (lower - m)/s``, ``b = (upper - m)/s``,
    ``E[Y] = lower Phi(a) + upper (1 - Phi(b)) + m (Phi(b) - Phi(a)) + s (phi(a) - phi(b))`` and
    ``E[Y^2] = lower^2 Phi(a) + upper^2 (1 - Phi(b)) + (m^2 + s^2)(Phi(b) - Phi(a))
    + s ((lower + m) phi(a) - (upper + m) phi(b))``. ``std = 0`` gives ``clamp(mean)`` exactly.
    """
    m = mean.double()
    s = std.double().abs()
    lo = torch.full_like(m, float(lower))
    if upper is None:
        hi = torch.full_like(m, math.inf)
    else:
        hi = torch.as_tensor(upper, dtype=torch.float64, device=m.device).expand_as(m).clone()
    safe = torch.where(s > 0, s, torch.ones_like(s))
    a = (lo - m) / safe
    b = (hi - m) / safe
    pa, pb = _cdf(a), _cdf(b)
    fa, fb = _phi(a), _phi(b)
    finite_hi = torch.isfinite(hi)
    hi0 = torch.where(finite_hi, hi, torch.zeros_like(hi))
    upper_mass = torch.where(finite_hi, 1 - pb, torch.zeros_like(pb))
    fb_term = torch.where(finite_hi, fb, torch.zeros_like(fb))
    e1 = lo * pa + hi0 * upper_mass + m * (pb - pa) + safe * (fa - fb_term)
    e2 = (lo ** 2 * pa + hi0 ** 2 * upper_mass + (m ** 2 + safe ** 2) * (pb - pa)
          + safe * ((lo + m) * fa - (hi0 + m) * fb_term))
    var = (e2 - e1 ** 2).clamp_min(0)
    point = torch.minimum(torch.maximum(m, lo), hi)
    return torch.where(s > 0, e1, point), torch.where(s > 0, var, torch.zeros_like(var))


def _act_bounds(kind: str, module: Optional[nn.Module]):
    if kind == "relu":
        return None
    if kind == "relu6":
        return 6.0
    return module.upper.detach().double()


class InputStats(NamedTuple):
    """Per-channel statistics of a layer's input derived from BN layers: ``mean``, ``var`` (None
    when unknown; after a global average pool the per-pixel variance, an upper bound) and the
    support ``[lower, upper]`` (possibly infinite)."""

    mean: torch.Tensor
    var: Optional[torch.Tensor]
    lower: torch.Tensor
    upper: torch.Tensor


@torch.no_grad()
def expected_layer_stats(model: nn.Module) -> Dict[str, InputStats]:
    """``{conv / linear name: InputStats}`` for the layers whose input statistics follow from the
    BN layers of ``model`` (see the module docstring)."""
    graph = try_symbolic_trace(model)
    if graph is None:
        raise ValueError("bias correction needs a model torch.fx can trace (it follows the BN statistics "
                         "through the graph)")
    modules = dict(model.named_modules())
    stats: Dict[str, Optional[InputStats]] = {}
    result: Dict[str, InputStats] = {}

    def get(arg) -> Optional[InputStats]:
        return stats.get(arg.name) if isinstance(arg, torch.fx.Node) else None

    for node in graph.nodes:
        kind = node_kind(node, modules)
        src = get(node.args[0]) if node.args else None
        out: Optional[InputStats] = None
        if kind in ("conv", "linear"):
            if src is not None and len(node.args) == 1:
                result[node.target] = src
        elif kind == "bn":
            bn = modules[node.target]
            beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros(bn.num_features,
                                                                                  dtype=torch.float64)
            gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(beta)
            inf = torch.full_like(beta, math.inf)
            out = InputStats(beta, gamma ** 2, -inf, inf)
        elif kind in ("relu", "relu6", "clamp"):
            if src is not None and src.var is not None:
                upper = _act_bounds(kind, modules.get(node.target) if node.op == "call_module" else None)
                mean, var = clipped_normal_moments(src.mean, src.var.sqrt(), 0.0, upper)
                hi = torch.full_like(mean, math.inf) if upper is None else \
                    torch.as_tensor(upper, dtype=torch.float64).expand_as(mean).clone()
                out = InputStats(mean, var, torch.zeros_like(mean), hi)
        elif kind in ("pass", "flatten"):
            out = src
        elif kind == "avgpool":
            # averaging pixels keeps the mean; the per-pixel variance stays as an UPPER bound
            out = src
        elif kind == "add":
            other = get(node.args[1])
            if src is not None and other is not None and src.mean.shape == other.mean.shape:
                var = src.var + other.var if src.var is not None and other.var is not None else None
                out = InputStats(src.mean + other.mean, var, src.lower + other.lower, src.upper + other.upper)
        stats[node.name] = out
    return result


def expected_layer_inputs(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``{conv / linear name: E[input] per channel (float64)}``, see :func:`expected_layer_stats`."""
    return {name: st.mean for name, st in expected_layer_stats(model).items()}


@torch.no_grad()
def bias_correct(qmodel: nn.Module, float_model: nn.Module) -> Dict[str, torch.Tensor]:
    """Subtract ``(W_q - W) E[x]`` from the bias of every quantized layer of ``qmodel`` whose
    expected input follows from ``float_model``'s BN statistics. Returns ``{name: shift}``.

    Args:
        qmodel: a model from :func:`zsq_engine.quant.quantize_model` (weights calibrated; its
            layer names are those of ``float_model``), modified in place. Run this BEFORE
            activation calibration (it changes what later layers see).
        float_model: the float model it was quantized from, with its BatchNorm layers (e.g.
            the output of :func:`zsq_engine.synth_free.dfq`).
    """
    means = expected_layer_inputs(float_model)
    shifts = {}
    for name, layer in qmodel.named_modules():
        if not isinstance(layer, QuantLayer) or name not in means:
            continue
        wq = layer.weight_quantizer
        if wq is None or not wq.enabled:
            continue
        mu = means[name].to(layer.weight.device)
        eps = (layer.quantized_weight().double() - layer.weight.detach().double())
        groups = getattr(layer, "groups", 1)
        if mu.numel() != eps.shape[1] * groups:
            continue
        shift = weighted_channel_sum(eps, groups, mu)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(shift.numel(), dtype=layer.weight.dtype,
                                                  device=layer.weight.device))
        layer.bias.copy_((layer.bias.double() - shift).to(layer.bias.dtype))
        shifts[name] = shift
    return shifts
