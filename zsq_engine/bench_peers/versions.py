"""Versions of the optional peer engines, recorded next to every benchmark row."""
from __future__ import annotations

from typing import Dict, Optional

__all__ = ["peer_versions"]


def _version(module: str) -> Optional[str]:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - missing or broken: not there for the benchmark either
        return None
    return getattr(mod, "__version__", "unknown")


def peer_versions() -> Dict[str, Optional[str]]:
    """``{"torchao": ..., "onnxruntime": ...}``, None for a package that is not importable."""
    return {"torchao": _version("torchao"), "onnxruntime": _version("onnxruntime")}
