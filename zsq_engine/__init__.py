"""zsq_engine: zero-shot quantization of CNNs with fused Triton / C++ / CUDA kernels.

Importing the package is cheap and never fails for want of Triton, the native extension or a
GPU: subpackages (``ops``, ``quant``, ``models``, ``data`` ...) load on first attribute access.
"""
from __future__ import annotations

import importlib

from ._version import __version__

_SUBPACKAGES = ("ops", "quant", "models", "data", "utils", "synth", "recon", "qat", "runtime", "compat", "cli")

__all__ = ["__version__", *_SUBPACKAGES]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
