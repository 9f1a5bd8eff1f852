"""Whole-model wrapping, the bit-width policy and activation calibration.

* :func:`quantize_model` - fold BN, wrap every Conv2d / Linear in QuantConv2d / QuantLinear,
  calibrate the weights.
* :func:`calibrate_activations` - run calibration batches through the wrapped model with
  observers on the activation quantizers, then freeze the ranges.
* :func:`naive_ptq` - both: the naive post-training quantization baseline.
* :func:`list_quant_layers` / :func:`format_quant_layers` - the per-layer bit-widths, for reports.
* :func:`set_quant_state` - switch weight / activation quantization on or off everywhere.

Bit-width policy (BRECQ / Genie convention): the FIRST and LAST quantized layers (in forward
call order when the model is ``torch.fx``-traceable, else in registration order) get
``first_last_bits`` for their weights and their input activations; the first layer's input (the
image) stays float unless ``quantize_first_input``.
"""
from __future__ import annotations

import copy
import warnings
from typing import Iterable, List, NamedTuple, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .bn_fold import fold_model_bn
from .calibration import ACT_METHODS, WEIGHT_METHODS, make_observer
from .graph import call_module_order, replace_module
from .modules import QuantConv2d, QuantLayer, QuantLinear
from .quantizer import QuantSpec, UniformQuantizer, check_bits

__all__ = ["quantize_model", "calibrate_activations", "naive_ptq", "QuantLayerInfo", "list_quant_layers",
           "format_quant_layers", "set_quant_state", "quant_layers"]


def quant_layers(model: nn.Module) -> List[tuple]:
    """``[(qualified name, QuantLayer)]`` in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]


def _wrappable(m: nn.Module) -> bool:
    # A subclass with its own forward (e.g. static same-padding convs) would lose that behaviour
    # inside the wrapper, so only layers computing exactly conv2d / linear are wrapped.
    if isinstance(m, nn.Conv2d):
        return type(m).forward is nn.Conv2d.forward
    if isinstance(m, nn.Linear):
        return type(m).forward is nn.Linear.forward
    return False


def float_layers_in_call_order(model: nn.Module) -> List[tuple]:
    """``[(name, layer)]`` of the conv / linear layers quantize_model wraps, in the order the
    forward calls them (the first is the stem whose input policy ``quantize_first_input`` sets)."""
    layers = []
    skipped = []
    for n, m in model.named_modules():
        if _wrappable(m):
            layers.append((n, m))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            skipped.append(n)
    if skipped:
        warnings.warn(f"layers with a custom forward are left in float: {skipped}", stacklevel=3)
    if not layers:
        raise ValueError("model has no nn.Conv2d or nn.Linear layer that can be quantized")
    order = call_module_order(model)
    if order is None:
        return layers
    rank = {name: i for i, name in enumerate(order)}
    # Layers the traced forward never calls keep their registration order, after the called ones.
    return sorted(layers, key=lambda nm: (0, rank[nm[0]]) if nm[0] in rank else (1, 0))


def quantize_model(model: nn.Module, wbits: int, abits: int, *, first_last_bits: Optional[int] = 8,
                   quantize_first_input: bool = False, weight_method: str = "mse", act_method: str = "minmax",
                   per_channel_weights: bool = True, symmetric_weights: bool = False,
                   symmetric_acts: bool = False, fold_bn: bool = True, inplace: bool = False) -> nn.Module:
    """Wrap every ``nn.Conv2d`` / ``nn.Linear`` of ``model`` into a fake-quantized layer.

    Subclasses of those with their own ``forward`` (e.g. static same-padding convs) cannot be
    wrapped faithfully: they stay float, with a warning naming them.

    Args:
        model: float model (BatchNorm layers allowed).
        wbits, abits: weight / input-activation bits of the inner layers (2..8).
        first_last_bits: bits for the first and last layer (weights and input activations);
            None = same as the rest.
        quantize_first_input: quantize the first layer's input too (default: it stays float).
        weight_method: weight calibration, 'mse' (Lp clipping search, p=2.4, 80 candidates) or
            'minmax'. Weights are calibrated here.
        act_method: activation observer used later by :func:`calibrate_activations`:
            'minmax', 'percentile' (99.99) or 'mse'.
        per_channel_weights: one scale per output channel (axis 0) instead of per tensor.
        symmetric_weights: symmetric signed weight grid instead of asymmetric unsigned.
        symmetric_acts: symmetric signed activation grid instead of asymmetric unsigned.
        fold_bn: fold BatchNorm2d into the preceding conv first (see :func:`fold_model_bn`).
        inplace: modify ``model`` itself instead of a deep copy.
    Returns:
        The quantized model, in the same train/eval mode as ``model``. Its activation
        quantizers are not calibrated yet: run :func:`calibrate_activations` (or disable them).
    Raises:
        ValueError / TypeError: bad bit-widths or methods (naming the argument), a model with
        no Conv2d / Linear layer, or a model that is already quantized.
    """
    check_bits(wbits, "wbits")
    check_bits(abits, "abits")
    if first_last_bits is not None:
        check_bits(first_last_bits, "first_last_bits")
    if weight_method not in WEIGHT_METHODS:
        raise ValueError(f"weight_method must be one of {WEIGHT_METHODS}, got {weight_method!r}")
    if act_method not in ACT_METHODS:
        raise ValueError(f"act_method must be one of {ACT_METHODS}, got {act_method!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if any(isinstance(m, QuantLayer) for m in model.modules()):
        raise ValueError("model already contains quantized layers (QuantConv2d / QuantLinear); "
                         "pass the float model")
    if not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()):
        raise ValueError("model has no nn.Conv2d or nn.Linear layer to quantize")

    if not inplace:
        model = copy.deepcopy(model)
    if fold_bn:
        model = fold_model_bn(model, inplace=True)

    layers = float_layers_in_call_order(model)
    edge_bits = first_last_bits
    first_name, last_name = layers[0][0], layers[-1][0]
    for name, layer in layers:
        is_first, is_last = name == first_name, name == last_name
        w_bits = edge_bits if (is_first or is_last) and edge_bits is not None else wbits
        if is_first and not quantize_first_input:
            a_bits = None
        elif (is_first or is_last) and edge_bits is not None:
            a_bits = edge_bits
        else:
            a_bits = abits
        wspec = QuantSpec(bits=w_bits, symmetric=symmetric_weights, per_channel=per_channel_weights, axis=0)
        aspec = QuantSpec(bits=a_bits, symmetric=symmetric_acts) if a_bits is not None else None
        wrapper_cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        qlayer = wrapper_cls(layer, wspec, aspec)
        qlayer.train(layer.training)
        qlayer.calibrate_weight(weight_method)
        if qlayer.act_quantizer is not None:
            qlayer.act_quantizer.calibration_method = act_method
        replace_module(model, name, qlayer)
    return model


def _activation_quantizers(model: nn.Module) -> List[tuple]:
    return [(f"{n}.act_quantizer", m.act_quantizer) for n, m in quant_layers(model)
            if m.act_quantizer is not None]


def _batch_input(batch):
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("calibration batch is an empty tuple/list")
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"calibration batches must be tensors or (tensor, ...) tuples, got {type(batch).__name__}")
    return batch


@torch.no_grad()
def calibrate_activations(qmodel: nn.Module, batches: Iterable, num_batches: Optional[int] = None,
                          progress: bool = True, *, method: Optional[str] = None,
                          observer_kwargs: Optional[dict] = None) -> nn.Module:
    """Calibrate the input-activation ranges of a model from :func:`quantize_model`.

    The model runs in eval mode under ``no_grad`` with weight quantization on (as set) while
    every activation quantizer observes its input and passes it through unquantized; at the
    end each observer's range is frozen into its quantizer. The train/eval mode is restored.

    Args:
        qmodel: quantized model (modified in place and returned).
        batches: iterable of input tensors ``[N, ...]`` or of tuples whose first element is the
            input (e.g. a DataLoader yielding ``(x, y)``); a single tensor is one batch. Batches
            are moved to the device of the model's first parameter.
        num_batches: use at most this many batches (None = all).
        progress: show a tqdm progress bar.
        method: observer for every quantizer ('minmax' | 'percentile' | 'mse'); default: the
            ``act_method`` given to quantize_model.
        observer_kwargs: extra arguments of the observer (e.g. ``{'percentile': 99.9}``).
    Raises:
        ValueError: no quantized layers, empty calibration data, bad num_batches / method.
    A quantizer whose layer never ran (unused branch) is left uncalibrated with a warning.
    """
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)
                                    or num_batches < 1):
        raise ValueError(f"num_batches must be a positive int or None, got {num_batches!r}")
    if method is not None and method not in ACT_METHODS:
        raise ValueError(f"method must be one of {ACT_METHODS}, got {method!r}")
    if not quant_layers(qmodel):
        raise ValueError("qmodel has no quantized layers: call quantize_model first")
    quantizers = _activation_quantizers(qmodel)
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    param = next(qmodel.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    kwargs = observer_kwargs or {}

    was_training = qmodel.training
    seen = 0
    try:
        for _, q in quantizers:
            q.observer = make_observer(method or q.calibration_method or "minmax", q.spec, **kwargs)
        qmodel.eval()
        total = num_batches
        if total is None and hasattr(batches, "__len__"):
            total = len(batches)
        bar = tqdm(batches, total=total, desc="calibrating activations", disable=not progress, leave=False)
        for batch in bar:
            if num_batches is not None and seen >= num_batches:
                break
            qmodel(_batch_input(batch).to(device))
            seen += 1
        bar.close()
        if seen == 0:
            raise ValueError("calibration data is empty: batches yielded nothing")
        unused = []
        for name, q in quantizers:
            if q.observer.num_batches == 0:
                unused.append(name)
                continue
            q.set_qparams(*q.observer.compute_qparams())
        if unused:
            warnings.warn(f"activation quantizers never ran during calibration and stay uncalibrated: {unused}",
                          stacklevel=2)
    finally:
        for _, q in quantizers:
            q.observer = None
        qmodel.train(was_training)
    return qmodel


def naive_ptq(model: nn.Module, calib_batches: Iterable, wbits: int, abits: int, *,
              num_batches: Optional[int] = None, progress: bool = True, snap_bias: bool = True,
              **kwargs) -> nn.Module:
    """Naive post-training quantization: :func:`quantize_model`, :func:`calibrate_activations`,
    then (``snap_bias``) each quantized-input layer's bias rounded onto its int32 accumulator grid
    ``s_x * s_w`` (:func:`zsq_engine.quant.bias_grid.snap_biases`), as integer engines add it.

    ``kwargs`` go to quantize_model (first_last_bits, weight_method, act_method, ...). Returns a
    new quantized model unless ``inplace=True``.
    """
    from .bias_grid import snap_biases

    qmodel = quantize_model(model, wbits, abits, **kwargs)
    qmodel = calibrate_activations(qmodel, calib_batches, num_batches=num_batches, progress=progress)
    if snap_bias:
        snap_biases(qmodel)
    return qmodel


def set_quant_state(model: nn.Module, weight: Optional[bool] = None, act: Optional[bool] = None) -> nn.Module:
    """Enable / disable all weight (``weight``) and activation (``act``) quantizers; None = unchanged."""
    for _, layer in quant_layers(model):
        if weight is not None and layer.weight_quantizer is not None:
            layer.weight_quantizer.enabled = bool(weight)
        if act is not None and layer.act_quantizer is not None:
            layer.act_quantizer.enabled = bool(act)
    return model


class QuantLayerInfo(NamedTuple):
    """One row of :func:`list_quant_layers`; bits None = float."""

    name: str
    kind: str
    weight_bits: Optional[int]
    act_bits: Optional[int]
    weight_per_channel: Optional[bool]
    calibrated: bool


def _is_calibrated(q: Optional[UniformQuantizer]) -> bool:
    return q is None or q.calibrated


def list_quant_layers(model: nn.Module) -> List[QuantLayerInfo]:
    """Every quantized layer with its bit-widths, in registration order."""
    rows = []
    for name, layer in quant_layers(model):
        wq = layer.weight_quantizer
        rows.append(QuantLayerInfo(
            name=name, kind=type(layer).__name__, weight_bits=layer.weight_bits, act_bits=layer.act_bits,
            weight_per_channel=wq.spec.per_channel if wq is not None else None,
            calibrated=_is_calibrated(wq) and _is_calibrated(layer.act_quantizer)))
    return rows


def format_quant_layers(model: nn.Module) -> str:
    """A plain-text table of :func:`list_quant_layers`."""
    rows = list_quant_layers(model)
    header = ("layer", "type", "W bits", "A bits", "calibrated")
    body = [(r.name, r.kind, "float" if r.weight_bits is None else str(r.weight_bits),
             "float" if r.act_bits is None else str(r.act_bits), "yes" if r.calibrated else "no") for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(line.rstrip() for line in lines)
