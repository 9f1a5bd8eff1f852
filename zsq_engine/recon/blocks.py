"""Partition a quantized model into reconstruction units (blocks).

A unit is a submodule whose output is matched to the float model's during reconstruction:

* every module of a known residual-block type (:data:`BLOCK_TYPES`, declared by the model code in :mod:`zsq_engine.models.roles`: ResNet ``BasicBlock`` /
  ``Bottleneck``, MobileNetV2 ``InvertedResidual``, EfficientNet ``MBConvBlock``; extend with
  :func:`register_block_type`) that contains quantized layers; nested blocks are not split;
* every quantized layer (``QuantConv2d`` / ``QuantLinear``) outside such a block is a unit of its
  own (typically the stem conv and the classifier).

Or the user names the units (``names=[...]``); quantized layers they do not cover still get
single-layer units. Units are returned in forward call order (``torch.fx`` when the model is
traceable, registration order otherwise); each module must be called once per forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Type

from torch import nn

from ..models.roles import BLOCK_TYPES, is_block
from ..quant.graph import call_module_order
from ..quant.modules import QuantLayer

__all__ = ["Unit", "BLOCK_TYPES", "register_block_type", "partition", "format_units"]


def register_block_type(cls: Type[nn.Module]) -> None:
    """Treat modules of class ``cls`` (and subclasses) as reconstruction blocks."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"cls must be an nn.Module subclass, got {cls!r}")
    if cls not in BLOCK_TYPES:
        BLOCK_TYPES.append(cls)


@dataclass
class Unit:
    """One reconstruction unit: qualified ``name`` in the model, ``kind`` ('block' or 'layer'),
    the class name ``type_name`` and the qualified names of its quantized ``layers``."""

    name: str
    kind: str
    type_name: str
    layers: Tuple[str, ...]


def _quant_layer_names(model: nn.Module, prefix: str) -> Tuple[str, ...]:
    sub = model.get_submodule(prefix) if prefix else model
    if isinstance(sub, QuantLayer):
        return (prefix,)
    return tuple(f"{prefix}.{n}" if prefix else n for n, m in sub.named_modules() if isinstance(m, QuantLayer))


def _covered(name: str, roots: Sequence[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def partition(model: nn.Module, names: Optional[Sequence[str]] = None) -> List[Unit]:
    """Reconstruction units of a model from :func:`zsq_engine.quant.quantize_model`.

    Args:
        model: quantized model (holding ``QuantLayer``s).
        names: optional qualified module names to use as units instead of the detected blocks.
    Raises:
        ValueError: no quantized layers; an unknown name, a name holding no quantized layer, or
            names that overlap (one inside another).
    """
    all_layers = [n for n, m in model.named_modules() if isinstance(m, QuantLayer)]
    if not all_layers:
        raise ValueError("model has no quantized layers: call zsq_engine.quant.quantize_model first")
    modules = dict(model.named_modules())
    roots: List[str] = []
    if names is not None:
        for n in names:
            if not isinstance(n, str) or n not in modules or n == "":
                raise ValueError(f"unit {n!r} is not a submodule name of the model")
            if not _quant_layer_names(model, n):
                raise ValueError(f"unit {n!r} contains no quantized layer")
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if a == b or _covered(a, [b]) or _covered(b, [a]):
                    raise ValueError(f"units {a!r} and {b!r} overlap")
        roots = list(names)
    else:
        for n, m in model.named_modules():
            if n and is_block(m) and not _covered(n, roots) and _quant_layer_names(model, n):
                roots.append(n)
    units = [Unit(n, "block" if not isinstance(modules[n], QuantLayer) else "layer", type(modules[n]).__name__,
                  _quant_layer_names(model, n)) for n in roots]
    for n in all_layers:
        if not _covered(n, roots):
            units.append(Unit(n, "layer", type(modules[n]).__name__, (n,)))
    return _sort_by_call_order(model, units, all_layers)


def _sort_by_call_order(model: nn.Module, units: List[Unit], all_layers: List[str]) -> List[Unit]:
    # fx may keep a whole container as one leaf (e.g. a Sequential of QuantLayers): a layer takes
    # the rank of its closest traced ancestor; ties keep registration order (stable sort).
    order = call_module_order(model) or []
    rank = {n: i for i, n in enumerate(order)}
    reg = {n: i for i, n in enumerate(all_layers)}

    def layer_key(name: str):
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            prefix = ".".join(parts[:k])
            if prefix in rank:
                return (rank[prefix], reg[name])
        return (len(rank), reg[name])

    return sorted(units, key=lambda u: min(layer_key(l) for l in u.layers))


def format_units(units: Sequence[Unit]) -> str:
    """One line per unit: index, name, type, number of quantized layers."""
    return "\n".join(f"{i:3d}  {u.name:30s} {u.type_name:18s} {len(u.layers)} layer(s)" for i, u in enumerate(units))
