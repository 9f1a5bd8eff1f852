"""Backend dispatch for the op layer.

Every public op (``zsq_engine.ops.fake_quant`` ...) is a name with one implementation per
backend. The pure-PyTorch ``reference`` implementation always exists and is the oracle; the
others are registered by the backend modules of each op family
(``zsq_engine/ops/<family>/{cpu,triton,cuda}.py``), imported the first time an op is
dispatched (so ``import zsq_engine`` never touches Triton, the C++ extension or a GPU).

Which implementation runs:

* forced: the context manager :func:`use_backend` (innermost wins) or else the environment
  variable ``ZSQ_BACKEND``. A forced backend that cannot run on this machine, or that cannot
  handle the tensor's device, is an error. A forced backend that simply has no kernel for this
  op yet falls back to ``reference`` with a one-time warning, unless ``strict=True`` was given.
* automatic: for CUDA tensors the op's CUDA preference order (``triton`` then ``cuda`` unless
  the op says otherwise), for CPU tensors ``cpu`` (the C++ extension); then ``reference``.
  When a faster backend has a kernel for the op but cannot run here (extension not built,
  Triton missing) a one-time warning says why.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

BACKENDS: Tuple[str, ...] = ("reference", "triton", "cuda", "cpu")
ENV_VAR = "ZSQ_BACKEND"

# op name -> backend name -> implementation
_REGISTRY: Dict[str, Dict[str, Callable]] = {}
# op name -> preferred backends for CUDA tensors (reference is always the last resort)
_CUDA_PREFERENCE: Dict[str, Tuple[str, ...]] = {}
_DEFAULT_CUDA_PREFERENCE = ("triton", "cuda")

# Modules whose import registers backend kernels: each op family's cpu / cuda / triton module
# (named by the family, :func:`add_backend_modules`).
_BACKEND_MODULES: List[str] = []
_backend_modules_loaded = False
_load_lock = threading.RLock()  # re-entered when a backend module imports a family
_warned: set = set()
_forced = threading.local()


class BackendUnavailableError(RuntimeError):
    """A backend was forced that cannot run here (or cannot run this op / device)."""


def register(op: str, backend: str, cuda_preference: Optional[Tuple[str, ...]] = None):
    """Decorator registering ``fn`` as the ``backend`` implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    def decorator(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[backend] = fn
        if cuda_preference is not None:
            _CUDA_PREFERENCE[op] = tuple(cuda_preference)
        return fn

    return decorator


def add_backend_modules(*modules: str) -> None:
    """Name modules (``zsq_engine.ops.<family>.cpu`` ...) that register an op family's backend
    kernels when imported. They are imported with the others the first time an op is
    dispatched (at once if that already happened), so ``import zsq_engine`` never loads Triton
    or the C++ extension."""
    with _load_lock:
        new = [m for m in modules if m not in _BACKEND_MODULES]
        _BACKEND_MODULES.extend(new)
        loaded = _backend_modules_loaded
    if loaded:
        for module in new:
            _import_backend(module)


def _import_backend(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken optional backend must never break the op layer
        _warn_once(f"load:{module}", f"zsq_engine: the backend module {module!r} failed to load ({exc!r}); "
                   "its kernels are treated as unavailable.")


def _load_backend_modules() -> None:
    """Import the optional backend modules once; each registers what it can."""
    global _backend_modules_loaded
    if _backend_modules_loaded:
        return
    with _load_lock:
        if _backend_modules_loaded:
            return
        i = 0
        while i < len(_BACKEND_MODULES):  # the list may grow while its modules import
            _import_backend(_BACKEND_MODULES[i])
            i += 1
        _backend_modules_loaded = True


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backend_status(name: str) -> Tuple[bool, str]:
    """(can this backend run on this machine, why not / what it is)."""
    _check_backend_name(name)
    return _backend_status_cached(name, triton_interpreter_enabled())


@functools.lru_cache(maxsize=None)
def _backend_status_cached(name: str, interpreter: bool) -> Tuple[bool, str]:
    # Cached: dispatch runs on every op call and these probes import modules / query CUDA.
    if name == "reference":
        return True, "pure PyTorch, always available"
    if name == "cpu":
        from zsq_engine import _ext

        status = _ext.extension_status()
        if status.get("cpu"):
            return True, "C++ extension (OpenMP CPU kernels)"
        return False, f"C++ extension not available: {status.get('error') or 'not built'}"
    if name == "cuda":
        from zsq_engine import _ext

        status = _ext.extension_status()
        if not status.get("cuda"):
            return False, ("C++ extension has no CUDA kernels: "
                           f"{status.get('error') or 'built without CUDA (CPU build of torch or no CUDA_HOME)'}")
        if not torch.cuda.is_available():
            return False, "extension built with CUDA but no CUDA device is visible"
        return True, "CUDA kernels of the C++ extension"
    if name == "triton":
        try:
            import triton  # noqa: F401
        except Exception as exc:
            return False, f"triton is not importable ({exc.__class__.__name__}: {exc})"
        try:
            importlib.import_module("zsq_engine.kernels")
        except Exception as exc:
            return False, f"zsq_engine.kernels is not importable ({exc})"
        if torch.cuda.is_available():
            return True, "Triton kernels on CUDA"
        if interpreter:
            return True, "Triton kernels through the interpreter (TRITON_INTERPRET=1, slow, for tests)"
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run Triton kernels on the CPU interpreter)"
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")


def available_backends() -> List[str]:
    """Backends that can run on this machine, in the order of :data:`BACKENDS`."""
    return [name for name in BACKENDS if backend_status(name)[0]]


def _check_backend_name(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


@contextlib.contextmanager
def use_backend(name: str, strict: bool = False) -> Iterator[None]:
    """Force every op dispatched inside the block onto ``name``.

    ``strict=True`` makes an op without a ``name`` kernel an error instead of a fallback to
    ``reference``. Raises :class:`BackendUnavailableError` at entry if the backend cannot run here.
    """
    _check_backend_name(name)
    ok, why = backend_status(name)
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} was requested but is not available: {why}")
    stack = getattr(_forced, "stack", None)
    if stack is None:
        stack = _forced.stack = []
    stack.append((name, strict))
    try:
        yield
    finally:
        stack.pop()


def forced_backend() -> Optional[Tuple[str, bool]]:
    """The (backend, strict) forced by :func:`use_backend` or ``ZSQ_BACKEND``, else None."""
    stack = getattr(_forced, "stack", None)
    if stack:
        return stack[-1]
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env:
        if env not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={env!r} is not a backend; expected one of {', '.join(BACKENDS)}")
        return env, False
    return None


def _backend_fits_device(backend: str, device: torch.device) -> bool:
    if backend == "reference":
        return True
    if backend == "cpu":
        return device.type == "cpu"
    if backend == "cuda":
        return device.type == "cuda"
    if backend == "triton":
        return device.type == "cuda" or (device.type == "cpu" and triton_interpreter_enabled())
    return False


def implementations(op: str) -> Dict[str, Callable]:
    """All registered implementations of ``op`` (backend -> callable), runnable or not."""
    _load_backend_modules()
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}")
    return dict(_REGISTRY[op])


def get_impl(op: str, backend: str) -> Callable:
    """The ``backend`` implementation of ``op``; a clear error if it does not exist or cannot run."""
    _check_backend_name(backend)
    impls = implementations(op)
    if backend not in impls:
        raise BackendUnavailableError(f"op {op!r} has no {backend!r} implementation "
                                      f"(it has: {', '.join(sorted(impls))})")
    ok, why = backend_status(backend)
    if not ok:
        raise BackendUnavailableError(f"backend {backend!r} is not available for op {op!r}: {why}")
    return impls[backend]


def select(op: str, device: torch.device) -> Tuple[str, Callable]:
    """Pick (backend name, implementation) of ``op`` for tensors on ``device``."""
    impls = implementations(op)
    forced = forced_backend()
    if forced is not None:
        name, strict = forced
        ok, why = backend_status(name)
        if not ok:
            raise BackendUnavailableError(f"backend {name!r} was forced but is not available: {why}")
        if not _backend_fits_device(name, device):
            raise BackendUnavailableError(f"backend {name!r} was forced but cannot run op {op!r} on a "
                                          f"{device.type} tensor")
        if name in impls:
            return name, impls[name]
        if strict:
            raise BackendUnavailableError(f"backend {name!r} was forced (strict) but op {op!r} has no "
                                          f"{name!r} kernel (it has: {', '.join(sorted(impls))})")
        _warn_once(f"forced:{op}:{name}", f"zsq_engine: op {op!r} has no {name!r} kernel; "
                   "using the reference implementation.")
        return "reference", impls["reference"]

    if device.type == "cuda":
        order = _CUDA_PREFERENCE.get(op, _DEFAULT_CUDA_PREFERENCE)
    elif device.type == "cpu":
        order = ("cpu",)
    else:
        order = ()
    for name in order:
        if name not in impls:
            continue
        ok, why = backend_status(name)
        if ok:
            return name, impls[name]
        _warn_once(f"auto:{op}:{name}", f"zsq_engine: the {name!r} kernel of op {op!r} cannot run ({why}); "
                   "falling back to a slower implementation.")
    return "reference", impls["reference"]


def dispatch(op: str, device: torch.device) -> Callable:
    """The implementation of ``op`` to run for tensors on ``device``."""
    return select(op, device)[1]
