"""How every op of the ``zsq`` namespace is defined: :func:`define_op` (a primitive: schema, fake,
reference default kernel, per-device kernel chosen by :mod:`.dispatch`),
:func:`define_differentiable_op` + :func:`with_eager_path` (a differentiable op, its autograd and
the eager fast path). See docs/architecture.md, "One mechanism".
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .dispatch import dispatch


def _device_of(args) -> torch.device:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):  # a Tensor[] argument
            return a[0].device
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


# Every differentiable op's plain implementation by its custom op: the eager path calls these.
_IMPL = {}


def define_differentiable_op(name: str, impl: Callable, fake: Optional[Callable]):
    """``zsq::name`` as a ``torch.library.custom_op`` (schema from ``impl``'s annotations) with
    ``fake`` as its meta implementation; returns the op. Give it a backward formula with
    :func:`with_eager_path`."""
    op = torch.library.custom_op(f"zsq::{name}", mutates_args=())(impl)
    if fake is not None:
        op.register_fake(fake)
    _IMPL[op] = impl
    return op


def call(ctx, op):
    """What a backward formula calls for ``op``: the plain implementation on the eager path (no
    dispatcher round trip), the custom op itself while torch.compile traces the backward."""
    return _IMPL[op] if getattr(ctx, "eager", False) else op


def with_eager_path(op, setup: Callable, backward: Callable, impl: Optional[Callable] = None) -> Callable:
    """Register ``backward`` (with ``setup`` as setup_context) as ``op``'s autograd and return the
    public callable of ``op``: a :func:`define_differentiable_op` op, or a :func:`define_op`
    primitive that is differentiable itself (then ``impl`` is its eager implementation).

    Under torch.compile it is the custom op (traced without a graph break, its registered
    autograd formula in the graph). In eager mode it is an ``autograd.Function`` running the
    same implementation, ``setup`` and ``backward`` directly: the custom-op machinery (schema
    parsing, dispatcher, its own autograd wrapper) costs tens of microseconds per call, more
    than the kernel itself on small tensors (docs/architecture.md). Both paths run the same
    primitives, so their results are identical."""
    if impl is None:
        impl = _IMPL[op]
    else:
        _IMPL[op] = impl

    class EagerPath(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            out = impl(*inputs)
            ctx.eager = True
            setup(ctx, inputs, out)
            return out

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    EagerPath.__name__ = EagerPath.__qualname__ = impl.__name__.strip("_").replace("_impl", "_eager")

    def public(*args):
        if torch.compiler.is_compiling():
            return op(*args)
        return EagerPath.apply(*args)

    torch.library.register_autograd(op, backward, setup_context=setup)
    return public
