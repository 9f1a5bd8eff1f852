"""Lazy, failure-tolerant access to the native extension ``zsq_engine._C``.

Nothing here runs at ``import zsq_engine`` time: the extension is imported on the first call to
one of the functions below, any failure is remembered (not raised), and no device is queried.
Callers that need the extension use :func:`require_extension`, which raises a RuntimeError that
says why it is missing and how to build it; dispatch code uses :func:`get_extension` or
:func:`extension_status` to decide whether to fall back to the pure-PyTorch reference.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any

__all__ = ["get_extension", "extension_status", "require_extension"]

_MODULE_NAME = "zsq_engine._C"
_BUILD_HINT = (
    "Build it with `pip install -e . --no-build-isolation` from the repository root on a machine "
    "with a C++ compiler (and nvcc plus a CUDA build of torch for the CUDA part), or check the "
    "build log: `pip install -v -e . --no-build-isolation` shows the compiler output; "
    "ZSQ_SKIP_EXT=1 at build time skips the extension on purpose."
)

_lock = threading.Lock()
_attempted = False
_module: ModuleType | None = None
_error: str | None = None


def _load() -> ModuleType | None:
    global _attempted, _module, _error
    if _attempted:
        return _module
    with _lock:
        if _attempted:
            return _module
        try:
            # The extension links against libtorch/libc10 without an rpath; importing torch
            # first loads them into the process.
            import torch  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - report any reason torch is unusable
            _error = f"torch is not importable ({type(exc).__name__}: {exc})"
        else:
            try:
                _module = importlib.import_module(_MODULE_NAME)
            except Exception as exc:  # noqa: BLE001 - ImportError, OSError (bad .so), ...
                if isinstance(exc, ModuleNotFoundError) and exc.name == _MODULE_NAME:
                    _error = (
                        f"{_MODULE_NAME} is not built (the package was installed without the "
                        "extension, or the build failed)"
                    )
                else:
                    _error = (
                        f"{_MODULE_NAME} failed to load ({type(exc).__name__}: {exc}); it may "
                        "have been built against a different torch version"
                    )
        _attempted = True
    return _module


def get_extension() -> ModuleType | None:
    """The loaded ``zsq_engine._C`` module, or None if it is not built or fails to load."""
    return _load()


def extension_status() -> dict[str, Any]:
    """What the native extension provides on this install.

    Returns ``{"built": bool, "cpu": bool, "cuda": bool, "error": str | None}``: ``built`` if
    ``zsq_engine._C`` loads, ``cpu`` / ``cuda`` if its CPU kernels / CUDA kernels are compiled
    in (``cuda`` says nothing about whether a GPU is present), ``error`` why it is not built
    (None when it is).
    """
    module = _load()
    if module is None:
        return {"built": False, "cpu": False, "cuda": False, "error": _error}
    return {
        "built": True,
        "cpu": hasattr(module, "pack_int4_cpu"),
        "cuda": hasattr(module, "pack_int4_cuda"),
        "error": None,
    }


def require_extension(part: str = "cpu") -> ModuleType:
    """Return ``zsq_engine._C``, raising a clear RuntimeError if it (or ``part``) is missing.

    ``part`` is ``"cpu"`` (the C++ CPU kernels), ``"cuda"`` (the CUDA kernels) or ``"any"``.
    """
    if part not in ("cpu", "cuda", "any"):
        raise ValueError(f"require_extension: part must be 'cpu', 'cuda' or 'any', got {part!r}")
    module = _load()
    if module is None:
        raise RuntimeError(
            f"The zsq_engine native extension is required here ({part} kernels) but is not "
            f"available: {_error}. {_BUILD_HINT}"
        )
    status = extension_status()
    if part == "cuda" and not status["cuda"]:
        info = module.build_info() if hasattr(module, "build_info") else {}
        raise RuntimeError(
            "The zsq_engine native extension was built without its CUDA kernels "
            f"(build_info: {info}). They are compiled only when the installed torch is a CUDA "
            "build and the CUDA toolkit (nvcc, CUDA_HOME) is found at build time. "
            + _BUILD_HINT
        )
    if part == "cpu" and not status["cpu"]:
        raise RuntimeError(
            f"The zsq_engine native extension at {getattr(module, '__file__', '?')} lacks its CPU "
            "kernels; it is stale or foreign. " + _BUILD_HINT
        )
    return module
