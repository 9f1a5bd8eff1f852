"""Defining an op of the ``zsq`` namespace with a schema, per-device kernels and a fake.

:func:`define_op` registers the integer ops (and any new op without autograd):

* ``zsq::<name>`` gets a schema and a fake (meta) implementation, so ``opcheck`` and
  ``torch.compile`` see it;
* its kernel for CPU tensors and for CUDA tensors is the backend :mod:`.dispatch` picks for that
  device (the C++ extension, Triton, CUDA; ``ZSQ_BACKEND`` / ``use_backend`` force one);
* its default kernel, for tensors on any other device, is the pure-PyTorch reference.

The backends stay registered under the op's own name with :func:`.dispatch.register`, so one
name leads from the public function to every kernel. A schema takes only typed arguments: when
the primitives take a richer Python value (an :class:`~zsq_engine.opspec.epilogue.Epilogue`),
``to_primitive`` turns the schema arguments back into the primitive's arguments.

The public function calls ``dispatch(name, device)`` itself in eager mode (what the op's
per-device kernel would do, without the dispatcher round trip of tens of microseconds) and the
custom op while torch.compile traces: see :func:`compiling`.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .dispatch import dispatch


def _device_of(args) -> torch.device:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    raise TypeError("an op needs at least one tensor argument")


def define_op(name: str, schema: str, reference: Callable, fake: Callable,
              to_primitive: Optional[Callable] = None):
    """Define ``zsq::name`` with ``schema`` (arguments and result, e.g.
    ``"(Tensor a, Tensor b) -> Tensor"``) and return its OpOverload.

    ``reference`` (the primitive's reference) is the default kernel, ``fake`` the meta
    implementation (it gets the schema arguments); CPU and CUDA tensors run
    ``dispatch(name, device)``. ``to_primitive(*schema_args)`` gives the primitive's argument
    tuple when it differs from the schema's."""
    qualname = f"zsq::{name}"
    unpack = to_primitive or (lambda *args: args)

    def on_device(*args):
        return dispatch(name, _device_of(args))(*unpack(*args))

    def by_reference(*args):
        return reference(*unpack(*args))

    on_device.__name__ = f"{name}_on_device"
    by_reference.__name__ = f"{name}_reference"
    torch.library.define(qualname, schema)
    torch.library.register_kernel(qualname, None, by_reference)
    torch.library.register_kernel(qualname, ("cpu", "cuda"), on_device)
    torch.library.register_fake(qualname, fake)
    return getattr(torch.ops.zsq, name).default


def compiling() -> bool:
    """Whether torch.compile is tracing: then the public functions call the custom op."""
    return torch.compiler.is_compiling()
