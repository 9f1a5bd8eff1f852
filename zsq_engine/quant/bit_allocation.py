"""Per-layer bit allocation from synthetic data: sensitivities, an exact solver, and applying a plan.

* :func:`layer_sensitivity` - ZeroQ's measure: the KL divergence between the float model's and
  a model's output distributions when ONE layer's weights (or its input activations) are
  quantized to ``b`` bits and everything else stays float, on synthetic images only.
* :func:`allocate` - exact multiple-choice knapsack: per layer pick one option ``(resource,
  cost)``, minimise the summed cost under a resource budget. Dynamic programming over layers
  keeping the Pareto front of (resource, cost) partial plans, so it is exact for real-valued
  resources and small in practice.
* :func:`plan_bits` - the budget as average bits: ``'size'`` (weights: ``sum params_l w_l <=
  B sum params_l``; activations, separately: ``sum elems_l a_l <= B sum elems_l`` with ``elems``
  the layer's input elements per image) or ``'bops'`` (``sum macs_l w_l a_l <= B^2 sum macs_l``,
  a float input counting as 8 bits); :func:`average_bits` reports a model's ``B`` in both senses. Costs add across layers and across weights/activations
  (ZeroQ's assumption).
* :func:`apply_bit_plan` - give the layers of a quantized model their planned bits
  (recalibrating weight grids; activation grids need :func:`calibrate_activations` after).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .calibration import calibrate_weight
from .model import calibrate_activations, quant_layers, quantize_model, set_quant_state
from .modules import QuantLayer
from .quantizer import QuantSpec, UniformQuantizer, check_bits

__all__ = ["LayerCost", "layer_costs", "layer_sensitivity", "weight_kl", "output_kl", "allocate", "plan_bits", "apply_bit_plan",
           "average_bits", "plan_for_budget", "format_plan", "BUDGET_MODES", "FLOAT_INPUT_BITS"]

BUDGET_MODES = ("size", "bops")
FLOAT_INPUT_BITS = 8


class LayerCost(NamedTuple):
    """Per-image sizes of one quantized layer: weight elements, input elements, multiply-adds."""

    params: int
    act_elems: int
    macs: int
    float_input: bool


@torch.no_grad()
def layer_costs(qmodel: nn.Module, example: torch.Tensor) -> Dict[str, LayerCost]:
    """``{name: LayerCost}`` of every quantized layer, measured by hooks on ``example[:1]``
    (one float forward; the quantizers' enabled flags are restored)."""
    costs = {}
    handles = []

    def hook(name):
        def fn(mod, inp, out):
            x = inp[0]
            if isinstance(mod, nn.Linear) or mod.__class__.__name__ == "QuantLinear":
                macs = out[0].numel() * mod.in_features
            else:
                k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
                macs = out[0].numel() * k
            costs[name] = LayerCost(mod.weight.numel(), x[0].numel(), int(macs), mod.act_quantizer is None)
        return fn

    # sizes only: run in float, so an uncalibrated model works too
    states = []
    for name, layer in quant_layers(qmodel):
        handles.append(layer.register_forward_hook(hook(name)))
        for q in (layer.weight_quantizer, layer.act_quantizer):
            if q is not None:
                states.append((q, q.enabled))
                q.enabled = False
    was = qmodel.training
    qmodel.eval()
    try:
        qmodel(example[:1].to(next(qmodel.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        for q, enabled in states:
            q.enabled = enabled
        qmodel.train(was)
    return costs


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Mean over the batch of KL(softmax(p) || softmax(q)), in float64."""
    lp = F.log_softmax(p_logits.double(), dim=1)
    lq = F.log_softmax(q_logits.double(), dim=1)
    return float((lp.exp() * (lp - lq)).sum(1).mean())


@torch.no_grad()
def layer_sensitivity(model: nn.Module, images: torch.Tensor, *, weight_bits: Sequence[int] = (2, 3, 4, 6, 8),
                      act_bits: Sequence[int] = (4, 6, 8), batch_size: int = 128,
                      **quant_kwargs) -> Dict[str, Dict[Tuple[str, int], float]]:
    """``{layer: {('w', b): KL, ('a', b): KL}}`` with only that layer's weights / input at ``b`` bits.

    Args:
        model: float model (not modified).
        images: synthetic images ``[N, ...]`` in the model's input space (also used to calibrate
            the activation grids).
        weight_bits, act_bits: candidate bit-widths.
        quant_kwargs: further :func:`quantize_model` arguments (weight_method, act_method, ...);
            ``first_last_bits`` is forced to None (every layer is a candidate).
    """
    for b in list(weight_bits) + list(act_bits):
        check_bits(b, "bits")
    if not isinstance(images, torch.Tensor) or images.dim() < 2 or images.shape[0] == 0:
        raise ValueError("images must be a non-empty tensor [N, ...] of synthetic inputs")
    quant_kwargs = dict(quant_kwargs, first_last_bits=None)
    device = next(model.parameters()).device
    batches = [images[i:i + batch_size].to(device) for i in range(0, images.shape[0], batch_size)]
    was = model.training
    model.eval()
    ref = [model(x) for x in batches]
    model.train(was)
    result: Dict[str, Dict[Tuple[str, int], float]] = {}

    def measure(qmodel, kind, bits):
        layers = quant_layers(qmodel)
        for name, layer in layers:
            q = layer.weight_quantizer if kind == "w" else layer.act_quantizer
            if q is None:
                continue
            set_quant_state(qmodel, weight=False, act=False)
            q.enabled = True
            kl = sum(_kl(r, qmodel(x)) * x.shape[0] for r, x in zip(ref, batches)) / images.shape[0]
            result.setdefault(name, {})[(kind, bits)] = kl

    for b in weight_bits:
        qmodel = quantize_model(model, b, 8, **quant_kwargs).eval()
        measure(qmodel, "w", b)
    for b in act_bits:
        qmodel = quantize_model(model, 8, b, **quant_kwargs).eval()
        calibrate_activations(qmodel, batches, progress=False)
        measure(qmodel, "a", b)
    return result


@torch.no_grad()
def weight_kl(qmodel: nn.Module, model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> Dict[str, float]:
    """``{layer: KL}`` of ``qmodel`` with only that layer's weight quantizer on (whatever its
    weights are: nearest rounding, SQuant or a reconstruction's learnt rounding), against the
    float ``model`` on ``images``. ``qmodel``'s quantizer states are left all off."""
    batches = [images[i:i + batch_size] for i in range(0, images.shape[0], batch_size)]
    was = model.training
    model.eval()
    ref = [model(x) for x in batches]
    model.train(was)
    qmodel.eval()
    out = {}
    for name, layer in quant_layers(qmodel):
        if layer.weight_quantizer is None:
            continue
        set_quant_state(qmodel, weight=False, act=False)
        layer.weight_quantizer.enabled = True
        out[name] = sum(_kl(r, qmodel(x)) * x.shape[0] for r, x in zip(ref, batches)) / images.shape[0]
    set_quant_state(qmodel, weight=False, act=False)
    return out


@torch.no_grad()
def output_kl(qmodel: nn.Module, model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> float:
    """Mean ``KL(softmax(model(x)) || softmax(qmodel(x)))`` over ``images``, every quantizer of
    ``qmodel`` as it is: the score for choosing among whole quantized models (e.g. candidate bit
    plans after reconstruction) on synthetic images, with no labels."""
    if not isinstance(images, torch.Tensor) or images.dim() < 2 or images.shape[0] == 0:
        raise ValueError("images must be a non-empty tensor [N, ...]")
    batches = [images[i:i + batch_size] for i in range(0, images.shape[0], batch_size)]
    was_q, was_m = qmodel.training, model.training
    qmodel.eval()
    model.eval()
    try:
        return sum(_kl(model(x), qmodel(x)) * x.shape[0] for x in batches) / images.shape[0]
    finally:
        qmodel.train(was_q)
        model.train(was_m)


class Option(NamedTuple):
    resource: float
    cost: float
    choice: object


def allocate(options: Sequence[Sequence[Option]], budget: float) -> Tuple[List[object], float, float]:
    """Exact multiple-choice knapsack: one option per layer, ``sum resource <= budget``, min ``sum cost``.

    Returns ``(choices, total cost, total resource)``. Raises ValueError if no plan fits.
    Dynamic programming over layers on the Pareto front of partial plans (a partial plan is
    dropped when another uses no more resource at no more cost), which loses no optimum.
    """
    if not options:
        raise ValueError("options must list at least one layer")
    front: List[Tuple[float, float, tuple]] = [(0.0, 0.0, ())]
    slack = 1e-9 * max(1.0, abs(budget))
    for i, opts in enumerate(options):
        if not opts:
            raise ValueError(f"layer {i} has no option")
        cand = [(r + o.resource, c + o.cost, plan + (j,)) for r, c, plan in front for j, o in enumerate(opts)
                if r + o.resource <= budget + slack]
        if not cand:
            raise ValueError(f"budget {budget:g} is too small: even the cheapest choices exceed it")
        cand.sort(key=lambda t: (t[0], t[1]))
        front = []
        best = float("inf")
        for t in cand:
            if t[1] < best:
                front.append(t)
                best = t[1]
    r, c, plan = min(front, key=lambda t: (t[1], t[0]))
    return [options[i][j].choice for i, j in enumerate(plan)], c, r


def plan_bits(sensitivity: Dict[str, Dict[Tuple[str, int], float]], costs: Dict[str, LayerCost],
              budget_bits: float, *, mode: str = "size") -> Dict[str, Tuple[int, Optional[int]]]:
    """``{layer: (weight bits, act bits or None)}`` minimising the summed KL under the budget.

    Args:
        sensitivity: from :func:`layer_sensitivity` (its bit-widths are the candidates).
        costs: from :func:`layer_costs`.
        budget_bits: average bits ``B`` (see the module docstring for ``mode``).
        mode: 'size' or 'bops'.
    """
    if mode not in BUDGET_MODES:
        raise ValueError(f"mode must be one of {BUDGET_MODES}, got {mode!r}")
    if isinstance(budget_bits, bool) or not isinstance(budget_bits, (int, float)) or budget_bits <= 0:
        raise ValueError(f"budget_bits must be a positive number, got {budget_bits!r}")
    names = [n for n in costs if n in sensitivity]
    if not names:
        raise ValueError("no layer has both a cost and a sensitivity")

    def bits_of(name, kind):
        return sorted(b for k, b in sensitivity[name] if k == kind)

    plan: Dict[str, Tuple[int, Optional[int]]] = {}
    if mode == "size":
        w_opts = [[Option(costs[n].params * b, sensitivity[n][("w", b)], b) for b in bits_of(n, "w")] for n in names]
        w_choice, _, _ = allocate(w_opts, budget_bits * sum(costs[n].params for n in names))
        act_names = [n for n in names if not costs[n].float_input and bits_of(n, "a")]
        a_choice = []
        if act_names:
            a_opts = [[Option(costs[n].act_elems * b, sensitivity[n][("a", b)], b) for b in bits_of(n, "a")]
                      for n in act_names]
            a_choice, _, _ = allocate(a_opts, budget_bits * sum(costs[n].act_elems for n in act_names))
        acts = dict(zip(act_names, a_choice))
        for n, w in zip(names, w_choice):
            plan[n] = (w, acts.get(n))
        return plan
    opts = []
    for n in names:
        layer_opts = []
        a_list = [None] if costs[n].float_input or not bits_of(n, "a") else bits_of(n, "a")
        for w in bits_of(n, "w"):
            for a in a_list:
                a_eff = FLOAT_INPUT_BITS if a is None else a
                cost = sensitivity[n][("w", w)] + (0.0 if a is None else sensitivity[n][("a", a)])
                layer_opts.append(Option(costs[n].macs * w * a_eff, cost, (w, a)))
        opts.append(layer_opts)
    budget = budget_bits ** 2 * sum(costs[n].macs for n in names)
    choices, _, _ = allocate(opts, budget)
    return dict(zip(names, choices))


def average_bits(qmodel: nn.Module, costs: Dict[str, LayerCost]) -> Dict[str, float]:
    """``{'weight': params-weighted mean weight bits, 'act': elements-weighted mean input bits
    (float inputs excluded), 'bops_bits': sqrt(sum macs w a / sum macs)}`` of a quantized model."""
    w_num = w_den = a_num = a_den = b_num = b_den = 0.0
    for name, layer in quant_layers(qmodel):
        c = costs[name]
        w = layer.weight_bits or 32
        w_num += c.params * w
        w_den += c.params
        a = layer.act_bits
        if a is not None:
            a_num += c.act_elems * a
            a_den += c.act_elems
        b_num += c.macs * w * (a if a is not None else FLOAT_INPUT_BITS)
        b_den += c.macs
    return {"weight": w_num / w_den, "act": a_num / a_den if a_den else float("nan"),
            "bops_bits": (b_num / b_den) ** 0.5}


@torch.no_grad()
def apply_bit_plan(qmodel: nn.Module, plan: Dict[str, Tuple[Optional[int], Optional[int]]], *,
                   weight_method: str = "mse") -> nn.Module:
    """Set each planned layer's weight / input bits in place; returns ``qmodel``.

    A new weight quantizer (same grid kind, new bits) is calibrated on the current weights with
    ``weight_method``; a new activation quantizer keeps its grid kind and calibration method and
    is left UNcalibrated (run :func:`calibrate_activations`). ``None`` leaves that part as it is.
    Raises ValueError for unknown layer names (naming them).
    """
    layers = dict(quant_layers(qmodel))
    unknown = sorted(set(plan) - set(layers))
    if unknown:
        raise ValueError(f"plan names layers that are not quantized layers of the model: {unknown}")
    for name, (wb, ab) in plan.items():
        layer: QuantLayer = layers[name]
        if wb is not None and layer.weight_quantizer is not None and wb != layer.weight_bits:
            check_bits(wb, f"plan[{name!r}] weight bits")
            old = layer.weight_quantizer
            spec = QuantSpec(wb, old.spec.symmetric, old.spec.signed, old.spec.per_channel, old.spec.axis)
            new = UniformQuantizer(spec, num_channels=old.scale.numel() if spec.per_channel else None)
            new.to(layer.weight.device)
            calibrate_weight(new, layer.weight, weight_method)
            layer.weight_quantizer = new
        if ab is not None and layer.act_quantizer is not None and ab != layer.act_bits:
            check_bits(ab, f"plan[{name!r}] activation bits")
            old = layer.act_quantizer
            spec = QuantSpec(ab, old.spec.symmetric, old.spec.signed, old.spec.per_channel, old.spec.axis)
            new = UniformQuantizer(spec).to(layer.weight.device)
            new.calibration_method = old.calibration_method
            layer.act_quantizer = new
    return qmodel


def plan_for_budget(model: nn.Module, images: torch.Tensor, budget_bits: float, *, mode: str = "size",
                    weight_bits: Sequence[int] = (2, 3, 4, 6, 8), act_bits: Sequence[int] = (4, 6, 8),
                    **quant_kwargs) -> Dict[str, Tuple[int, Optional[int]]]:
    """Sensitivities on ``images`` + layer sizes + the exact solver: ``{layer: (w bits, a bits)}``.

    ``quant_kwargs`` go to :func:`quantize_model` for the sensitivity models (e.g.
    ``weight_method``). Every quantized layer, first and last included, is allocated.
    """
    sens = layer_sensitivity(model, images, weight_bits=weight_bits, act_bits=act_bits, **quant_kwargs)
    costs = layer_costs(quantize_model(model, 8, 8, first_last_bits=None), images)
    return plan_bits(sens, costs, budget_bits, mode=mode)


def format_plan(plan: Dict[str, Tuple[int, Optional[int]]]) -> str:
    """One line per layer: ``name  W<w>A<a|float>``."""
    width = max((len(n) for n in plan), default=0)
    return "\n".join(f"  {n.ljust(width)}  W{w}A{'float' if a is None else a}" for n, (w, a) in plan.items())
