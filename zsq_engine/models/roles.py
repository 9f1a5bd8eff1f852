"""What the pipelines need to know about a model's modules, declared by the model code itself.

Architectures mark their classes with :func:`residual_block` (reconstruction units in recon,
feature taps in QAT), :func:`mobilenet_block` (BRECQ's MobileNet settings) and :func:`same_padding` (TensorFlow-"SAME" padding that the integer
runtime lowers to a pad node), so recon and runtime read these lists instead of importing
architectures. Users' own classes join with the same decorators (or
:func:`zsq_engine.recon.register_block_type`).
"""
from __future__ import annotations

from typing import List, Type

from torch import nn

__all__ = ["BLOCK_TYPES", "SAME_PADDING_TYPES", "MOBILENET_BLOCK_TYPES", "residual_block", "same_padding",
           "mobilenet_block", "is_block", "is_same_padding", "has_mobilenet_blocks"]

# Mutable on purpose: recon.register_block_type appends to this very list.
BLOCK_TYPES: List[Type[nn.Module]] = []
SAME_PADDING_TYPES: List[Type[nn.Module]] = []
MOBILENET_BLOCK_TYPES: List[Type[nn.Module]] = []


def _module_class(cls, what: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"{what} takes an nn.Module subclass, got {cls!r}")


def residual_block(cls: Type[nn.Module]) -> Type[nn.Module]:
    """Class decorator: modules of ``cls`` (and subclasses) are residual blocks."""
    _module_class(cls, "residual_block")
    if cls not in BLOCK_TYPES:
        BLOCK_TYPES.append(cls)
    return cls


def same_padding(cls: Type[nn.Module]) -> Type[nn.Module]:
    """Class decorator: ``cls`` zero-pads like TensorFlow "SAME" for its int attributes
    ``kernel_size`` and ``stride`` (total = max((ceil(H / s) - 1) * s + k - H, 0) per spatial
    dim, the odd pixel at the bottom / right). Exact type match: a subclass may pad differently."""
    _module_class(cls, "same_padding")
    if cls not in SAME_PADDING_TYPES:
        SAME_PADDING_TYPES.append(cls)
    return cls


def mobilenet_block(cls: Type[nn.Module]) -> Type[nn.Module]:
    """Class decorator: ``cls`` is a MobileNetV2 inverted-residual block, for which BRECQ uses
    its MobileNet hyper-parameters (the recon presets read :func:`has_mobilenet_blocks`)."""
    _module_class(cls, "mobilenet_block")
    if cls not in MOBILENET_BLOCK_TYPES:
        MOBILENET_BLOCK_TYPES.append(cls)
    return cls


def has_mobilenet_blocks(model: nn.Module) -> bool:
    kinds = tuple(MOBILENET_BLOCK_TYPES)
    return any(isinstance(m, kinds) for m in model.modules())


def is_block(m: nn.Module) -> bool:
    return isinstance(m, tuple(BLOCK_TYPES))


def is_same_padding(m: nn.Module) -> bool:
    return type(m) in SAME_PADDING_TYPES
