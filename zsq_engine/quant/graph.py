"""Module-graph helpers shared by BN folding and model wrapping (``torch.fx`` with fallbacks).

``torch.fx.symbolic_trace`` records which submodule is called on which value, which is what BN
folding (is this BN applied to that conv's output only?) and the first/last-layer policy (which
layer runs first?) need. Tracing fails on data-dependent control flow; callers then fall back to
the attribute structure and say so in their docstrings.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional

from torch import fx, nn

__all__ = ["try_symbolic_trace", "call_module_order", "get_parent", "replace_module"]


_LAYERS = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


class _LayerLeafTracer(fx.Tracer):
    """Leaves: standard ``torch.nn`` modules, every Conv / Linear / BatchNorm subclass (even one
    with its own forward), and any module containing none of those. The last rule keeps helper
    modules with shape-dependent control flow (e.g. TF-style "same" padding) from breaking the
    trace: their inside is irrelevant to folding and layer order."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _LAYERS):
            return True
        if not any(isinstance(sub, _LAYERS) for sub in m.modules()):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def try_symbolic_trace(model: nn.Module) -> Optional[fx.Graph]:
    """The ``torch.fx`` graph of ``model.forward``, or None if the model is not traceable.

    ``call_module`` node targets are qualified names of ``model.named_modules()``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _LayerLeafTracer().trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means "use the fallback"
        return None


def call_module_order(model: nn.Module) -> Optional[List[str]]:
    """Qualified names of submodules in the order the forward first calls them (None if untraceable)."""
    graph = try_symbolic_trace(model)
    if graph is None:
        return None
    seen: Dict[str, None] = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target not in seen:
            seen[node.target] = None
    return list(seen)


def get_parent(model: nn.Module, qualified_name: str):
    """(parent module, attribute name) of the submodule ``qualified_name``."""
    parent_name, _, attr = qualified_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr


def replace_module(model: nn.Module, qualified_name: str, new: nn.Module) -> None:
    """Replace the submodule ``qualified_name`` of ``model`` by ``new`` (works inside Sequential)."""
    parent, attr = get_parent(model, qualified_name)
    setattr(parent, attr, new)
