"""torch.library registration of the training-path ops (namespace ``zsq``).

Each public op is a ``torch.library.custom_op`` with a fake (meta) implementation, so
``torch.compile`` traces it without a graph break, and an autograd formula registered with
``register_autograd`` whose backward is itself a custom op. The real implementations of both
directions are *primitives* (plain forward / backward functions without autograd) chosen per
call by :mod:`.dispatch`: Triton for CUDA tensors, the C++ extension for CPU tensors, the
pure-PyTorch reference otherwise. The reference primitives live in :mod:`.reference` and every
kernel is tested against them.

Eager calls do not go through the custom-op machinery: the public names at the bottom of this
file run an ``autograd.Function`` over the same implementation and backward formula (see
:func:`_with_eager_path`; about 40 us less host time per call and direction), and switch to the
custom op while torch.compile traces. tests/test_ops_library.py checks the two paths agree bit
for bit.

Primitive names (registered with :func:`.dispatch.register`):
``fq_forward``, ``fq_backward``, ``lsq_backward``, ``qdrop_fq_forward``, ``qdrop_fq_backward``,
``qdrop_lsq_backward``, ``adaround_forward``, ``adaround_backward``, ``adaround_reg_forward``,
``adaround_reg_backward``, ``scale_search``.
The BN-statistics loss ``zsq::bn_stat_loss`` (primitives ``bn_stats_forward`` /
``bn_stats_backward``) is registered the same way in :mod:`.bn_ops`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .dispatch import dispatch, register
from .reference import adaround as _ref_ada
from .reference import fake_quant as _ref_fq
from .reference import qdrop as _ref_qdrop
from .reference import scale_search as _ref_search

register("fq_forward", "reference")(_ref_fq.fq_forward)
register("fq_backward", "reference")(_ref_fq.fq_backward)
register("lsq_backward", "reference")(_ref_fq.lsq_backward)
register("qdrop_fq_forward", "reference")(_ref_qdrop.qdrop_fq_forward)
register("qdrop_fq_backward", "reference")(_ref_qdrop.qdrop_fq_backward)
register("qdrop_lsq_backward", "reference")(_ref_qdrop.qdrop_lsq_backward)
register("adaround_forward", "reference")(_ref_ada.adaround_fake_quant)
register("adaround_backward", "reference")(_ref_ada.adaround_backward)
register("adaround_reg_forward", "reference")(_ref_ada.adaround_reg_forward)
register("adaround_reg_backward", "reference")(_ref_ada.adaround_reg_backward)
register("scale_search", "reference")(_ref_search.scale_search)


def _zp(zero_point: Tensor, quant_min: int, quant_max: int, clamp: bool) -> Tensor:
    # rounding the [C]-sized zero point is a tiny device op: no host sync
    return _ref_fq.rounded_zero_point(zero_point, quant_min, quant_max, clamp).contiguous()


def _param(t: Tensor) -> Tensor:
    return t.detach().float().contiguous()


def _reduce_like(grad: Tensor, like: Tensor) -> Tensor:
    return grad.to(like.dtype).reshape(like.shape)


# Every op's plain implementation by its custom op: the eager path below calls these directly.
_IMPL = {}


def _custom_op(name: str, impl):
    """Register ``impl`` as the custom op ``zsq::name`` (schema from its annotations)."""
    op = torch.library.custom_op(f"zsq::{name}", mutates_args=())(impl)
    _IMPL[op] = impl
    return op


def _call(ctx, op):
    """What a backward formula calls for ``op``: the plain implementation on the eager path (no
    dispatcher round trip), the custom op itself while torch.compile traces the backward."""
    return _IMPL[op] if getattr(ctx, "eager", False) else op


def _with_eager_path(op, setup, backward):
    """The public callable of a differentiable custom op.

    Under torch.compile it is the custom op (traced without a graph break, its registered
    autograd formula in the graph). In eager mode it is an ``autograd.Function`` running the
    same implementation, ``setup`` and ``backward`` directly: the custom-op machinery (schema
    parsing, dispatcher, its own autograd wrapper) costs tens of microseconds per call, more
    than the kernel itself on small tensors and enough to make a GPU training step host-bound.
    Both paths run the same primitives, so their results are identical."""
    impl = _IMPL[op]

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

    def call(*args):
        if torch.compiler.is_compiling():
            return op(*args)
        return EagerPath.apply(*args)

    # the same formula is the custom op's autograd, which torch.compile traces
    op.register_autograd(backward, setup_context=setup)
    return call


# ---------------------------------------------------------------- fake_quant (straight-through)

def _fake_quant_impl(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                axis: Optional[int]) -> Tensor:
    fn = dispatch("fq_forward", x.device)
    return fn(x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, False), quant_min, quant_max, axis)


_fake_quant = _custom_op("fake_quant", _fake_quant_impl)


@_fake_quant.register_fake
def _(x, scale, zero_point, quant_min, quant_max, axis):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_quant_backward_impl(dy: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                         quant_max: int, axis: Optional[int]) -> Tensor:
    fn = dispatch("fq_backward", x.device)
    return fn(dy.contiguous(), x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, False),
              quant_min, quant_max, axis)


_fake_quant_backward = _custom_op("fake_quant_backward", _fake_quant_backward_impl)


@_fake_quant_backward.register_fake
def _(dy, x, scale, zero_point, quant_min, quant_max, axis):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fq_setup(ctx, inputs, output):
    x, scale, zero_point, quant_min, quant_max, axis = inputs[:6]
    ctx.save_for_backward(x, scale, zero_point)
    ctx.args = (quant_min, quant_max, axis)


def _fq_backward(ctx, dy):
    x, scale, zero_point = ctx.saved_tensors
    return _call(ctx, _fake_quant_backward)(dy, x, scale, zero_point, *ctx.args), None, None, None, None, None


_fake_quant_public = _with_eager_path(_fake_quant, _fq_setup, _fq_backward)


# ---------------------------------------------------------------- lsq_fake_quant (learnable)

def _lsq_fake_quant_impl(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                    axis: Optional[int], grad_factor: float) -> Tensor:
    fn = dispatch("fq_forward", x.device)
    return fn(x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, True), quant_min, quant_max, axis)


_lsq_fake_quant = _custom_op("lsq_fake_quant", _lsq_fake_quant_impl)


@_lsq_fake_quant.register_fake
def _(x, scale, zero_point, quant_min, quant_max, axis, grad_factor):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _lsq_fake_quant_backward_impl(dy: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                             quant_max: int, axis: Optional[int], grad_factor: float
                             ) -> Tuple[Tensor, Tensor, Tensor]:
    fn = dispatch("lsq_backward", x.device)
    dx, dscale, dzp = fn(dy.contiguous(), x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, True),
                         quant_min, quant_max, axis, grad_factor)
    return dx, _reduce_like(dscale, scale), _reduce_like(dzp, zero_point)


_lsq_fake_quant_backward = _custom_op("lsq_fake_quant_backward", _lsq_fake_quant_backward_impl)


@_lsq_fake_quant_backward.register_fake
def _(dy, x, scale, zero_point, quant_min, quant_max, axis, grad_factor):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(scale),
            torch.empty_like(zero_point))


def _lsq_setup(ctx, inputs, output):
    x, scale, zero_point, quant_min, quant_max, axis, grad_factor = inputs
    ctx.save_for_backward(x, scale, zero_point)
    ctx.args = (quant_min, quant_max, axis, grad_factor)


def _lsq_backward(ctx, dy):
    x, scale, zero_point = ctx.saved_tensors
    qmin, qmax, axis, gf = ctx.args
    if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        # frozen quantization parameters: the cheaper straight-through kernel is enough
        zp = _ref_fq.rounded_zero_point(zero_point, qmin, qmax, clamp=True)
        return _call(ctx, _fake_quant_backward)(dy, x, scale, zp, qmin, qmax, axis), None, None, None, None, None, None
    dx, dscale, dzp = _call(ctx, _lsq_fake_quant_backward)(dy, x, scale, zero_point, qmin, qmax, axis, gf)
    return dx, dscale, dzp if ctx.needs_input_grad[2] else None, None, None, None, None


_lsq_fake_quant_public = _with_eager_path(_lsq_fake_quant, _lsq_setup, _lsq_backward)


# ---------------------------------------------------------------- QDrop fused into fake-quant

def _qdrop_fake_quant_impl(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                      axis: Optional[int], p: float, seed: int, offset: int, learnable: bool,
                      grad_factor: float) -> Tensor:
    fn = dispatch("qdrop_fq_forward", x.device)
    return fn(x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, learnable), quant_min, quant_max,
              axis, p, seed, offset)


_qdrop_fake_quant = _custom_op("qdrop_fake_quant", _qdrop_fake_quant_impl)


@_qdrop_fake_quant.register_fake
def _(x, scale, zero_point, quant_min, quant_max, axis, p, seed, offset, learnable, grad_factor):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _qdrop_fake_quant_backward_impl(dy: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                               quant_max: int, axis: Optional[int], p: float, seed: int, offset: int,
                               learnable: bool) -> Tensor:
    fn = dispatch("qdrop_fq_backward", x.device)
    return fn(dy.contiguous(), x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, learnable),
              quant_min, quant_max, axis, p, seed, offset)


_qdrop_fake_quant_backward = _custom_op("qdrop_fake_quant_backward", _qdrop_fake_quant_backward_impl)


@_qdrop_fake_quant_backward.register_fake
def _(dy, x, scale, zero_point, quant_min, quant_max, axis, p, seed, offset, learnable):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _qdrop_lsq_backward_op_impl(dy: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                           quant_max: int, axis: Optional[int], grad_factor: float, p: float, seed: int,
                           offset: int) -> Tuple[Tensor, Tensor, Tensor]:
    fn = dispatch("qdrop_lsq_backward", x.device)
    dx, dscale, dzp = fn(dy.contiguous(), x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, True),
                         quant_min, quant_max, axis, grad_factor, p, seed, offset)
    return dx, _reduce_like(dscale, scale), _reduce_like(dzp, zero_point)


_qdrop_lsq_backward_op = _custom_op("qdrop_lsq_fake_quant_backward", _qdrop_lsq_backward_op_impl)


@_qdrop_lsq_backward_op.register_fake
def _(dy, x, scale, zero_point, quant_min, quant_max, axis, grad_factor, p, seed, offset):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(scale),
            torch.empty_like(zero_point))


def _qdrop_setup(ctx, inputs, output):
    x, scale, zero_point, quant_min, quant_max, axis, p, seed, offset, learnable, grad_factor = inputs
    ctx.save_for_backward(x, scale, zero_point)
    ctx.args = (quant_min, quant_max, axis, p, seed, offset, learnable, grad_factor)


def _qdrop_backward(ctx, dy):
    x, scale, zero_point = ctx.saved_tensors
    qmin, qmax, axis, p, seed, offset, learnable, gf = ctx.args
    none8 = (None,) * 8
    if not learnable or not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        dx = _call(ctx, _qdrop_fake_quant_backward)(dy, x, scale, zero_point, qmin, qmax, axis, p, seed, offset, learnable)
        return (dx, None, None) + none8
    dx, dscale, dzp = _call(ctx, _qdrop_lsq_backward_op)(dy, x, scale, zero_point, qmin, qmax, axis, gf, p, seed, offset)
    return (dx, dscale, dzp if ctx.needs_input_grad[2] else None) + none8


_qdrop_fake_quant_public = _with_eager_path(_qdrop_fake_quant, _qdrop_setup, _qdrop_backward)


# ---------------------------------------------------------------- AdaRound

def _adaround_impl(w_floor: Tensor, alpha: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
              axis: Optional[int], hard: bool) -> Tensor:
    fn = dispatch("adaround_forward", w_floor.device)
    return fn(w_floor.contiguous(), alpha.contiguous(), _param(scale), _param(zero_point), quant_min, quant_max,
              axis, hard)


_adaround = _custom_op("adaround_fake_quant", _adaround_impl)


@_adaround.register_fake
def _(w_floor, alpha, scale, zero_point, quant_min, quant_max, axis, hard):
    return torch.empty_like(w_floor, memory_format=torch.contiguous_format)


def _adaround_backward_op_impl(dy: Tensor, w_floor: Tensor, alpha: Tensor, scale: Tensor, zero_point: Tensor,
                          quant_min: int, quant_max: int, axis: Optional[int]) -> Tuple[Tensor, Tensor]:
    fn = dispatch("adaround_backward", w_floor.device)
    dalpha, dscale = fn(dy.contiguous(), w_floor.contiguous(), alpha.contiguous(), _param(scale), _param(zero_point),
                        quant_min, quant_max, axis)
    return dalpha.to(alpha.dtype), _reduce_like(dscale, scale)


_adaround_backward_op = _custom_op("adaround_fake_quant_backward", _adaround_backward_op_impl)


@_adaround_backward_op.register_fake
def _(dy, w_floor, alpha, scale, zero_point, quant_min, quant_max, axis):
    return torch.empty_like(alpha, memory_format=torch.contiguous_format), torch.empty_like(scale)


def _adaround_setup(ctx, inputs, output):
    w_floor, alpha, scale, zero_point, quant_min, quant_max, axis, hard = inputs
    ctx.save_for_backward(w_floor, alpha, scale, zero_point, output if hard else None)
    ctx.args = (quant_min, quant_max, axis, hard)


def _adaround_backward(ctx, dy):
    w_floor, alpha, scale, zero_point, w_hard = ctx.saved_tensors
    qmin, qmax, axis, hard = ctx.args
    none5 = (None,) * 5
    if hard:
        # hard rounding has no gradient to alpha; d w / d scale = (q - zp) = w / scale
        dims = [d for d in range(w_floor.dim()) if d != axis] if axis is not None else list(range(w_floor.dim()))
        view = [1] * w_floor.dim()
        if axis is not None:
            view[axis] = -1
        dscale = (dy.float() * w_hard.float() / scale.float().reshape(view)).sum(dims)
        return (None, None, _reduce_like(dscale, scale), None) + (None,) * 4
    dalpha, dscale = _call(ctx, _adaround_backward_op)(dy, w_floor, alpha, scale, zero_point, qmin, qmax, axis)
    return (None, dalpha, dscale) + none5


_adaround_public = _with_eager_path(_adaround, _adaround_setup, _adaround_backward)


def _adaround_reg_impl(alpha: Tensor, beta: float) -> Tensor:
    return dispatch("adaround_reg_forward", alpha.device)(alpha.contiguous(), beta)


_adaround_reg = _custom_op("adaround_regularizer", _adaround_reg_impl)


@_adaround_reg.register_fake
def _(alpha, beta):
    return alpha.new_empty((), dtype=torch.float32)


def _adaround_reg_backward_op_impl(grad_out: Tensor, alpha: Tensor, beta: float) -> Tensor:
    fn = dispatch("adaround_reg_backward", alpha.device)
    return fn(grad_out.float().contiguous(), alpha.contiguous(), beta).to(alpha.dtype)


_adaround_reg_backward_op = _custom_op("adaround_regularizer_backward", _adaround_reg_backward_op_impl)


@_adaround_reg_backward_op.register_fake
def _(grad_out, alpha, beta):
    return torch.empty_like(alpha, memory_format=torch.contiguous_format)


def _reg_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.beta = inputs[1]


def _reg_backward(ctx, grad_out):
    (alpha,) = ctx.saved_tensors
    return _call(ctx, _adaround_reg_backward_op)(grad_out, alpha, ctx.beta), None


_adaround_reg_public = _with_eager_path(_adaround_reg, _reg_setup, _reg_backward)


# ---------------------------------------------------------------- scale search (no gradient)

def _scale_search_impl(x: Tensor, quant_min: int, quant_max: int, axis: Optional[int], num_candidates: int, p: float,
                  symmetric: bool) -> Tuple[Tensor, Tensor]:
    fn = dispatch("scale_search", x.device)
    scale, zp = fn(x.detach().contiguous(), quant_min, quant_max, axis, num_candidates, p, symmetric)
    return scale.float().contiguous(), zp.float().contiguous()


_scale_search = _custom_op("scale_search", _scale_search_impl)


@_scale_search.register_fake
def _(x, quant_min, quant_max, axis, num_candidates, p, symmetric):
    channels = 1 if axis is None else x.shape[axis]
    return x.new_empty((channels,), dtype=torch.float32), x.new_empty((channels,), dtype=torch.float32)


fake_quant = _fake_quant_public
lsq_fake_quant = _lsq_fake_quant_public
qdrop_fake_quant = _qdrop_fake_quant_public
adaround_fake_quant = _adaround_public
adaround_regularizer = _adaround_reg_public
scale_search = _scale_search
