"""The torch.library ops of the fake-quant family (namespace ``zsq``).

Primitives (:func:`..schema.define_op`: schema, fake, reference default, per-device kernel
chosen by :mod:`..dispatch` among this folder's ``cpu`` / ``triton`` modules):
``fq_forward``, ``fq_backward``, ``lsq_backward``, ``qdrop_fq_forward``, ``qdrop_fq_backward``,
``qdrop_lsq_backward``; the same names in ``reference.py``, ``kernels/fake_quant.py`` and
``csrc/bind/fake_quant.cpp`` (``_C.<name>_cpu``).

Differentiable ops (:func:`..schema.define_differentiable_op`, autograd registered, eager fast
path): ``fake_quant``, ``lsq_fake_quant``, ``qdrop_fake_quant`` and their backward ops.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..dispatch import dispatch, register
from ..schema import call, define_differentiable_op, define_op, with_eager_path
from . import reference as _ref

_QPARAMS = "Tensor scale, Tensor zero_point, int quant_min, int quant_max, int? axis"
_QDROP = "float p, int seed, int offset"
_GRADS = "(Tensor, Tensor, Tensor)"


def _empty_like_x(x, *rest):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _empty_like_dy_x(dy, x, *rest):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _lsq_grads_fake(dy, x, scale, zero_point, *rest):
    zp_dtype = zero_point.dtype if zero_point.is_floating_point() else torch.float32
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(scale),
            zero_point.new_empty(zero_point.shape, dtype=zp_dtype))


def _primitive(name: str, schema: str, fake):
    reference = getattr(_ref, name)
    register(name, "reference")(reference)
    return define_op(name, schema, reference, fake)


FQ_FORWARD = _primitive("fq_forward", f"(Tensor x, {_QPARAMS}) -> Tensor", _empty_like_x)
FQ_BACKWARD = _primitive("fq_backward", f"(Tensor dy, Tensor x, {_QPARAMS}) -> Tensor", _empty_like_dy_x)
LSQ_BACKWARD = _primitive("lsq_backward", f"(Tensor dy, Tensor x, {_QPARAMS}, float grad_factor) -> {_GRADS}",
                          _lsq_grads_fake)
QDROP_FQ_FORWARD = _primitive("qdrop_fq_forward", f"(Tensor x, {_QPARAMS}, {_QDROP}) -> Tensor", _empty_like_x)
QDROP_FQ_BACKWARD = _primitive("qdrop_fq_backward", f"(Tensor dy, Tensor x, {_QPARAMS}, {_QDROP}) -> Tensor",
                               _empty_like_dy_x)
QDROP_LSQ_BACKWARD = _primitive("qdrop_lsq_backward",
                                f"(Tensor dy, Tensor x, {_QPARAMS}, float grad_factor, {_QDROP}) -> {_GRADS}",
                                _lsq_grads_fake)
PRIMITIVES = (FQ_FORWARD, FQ_BACKWARD, LSQ_BACKWARD, QDROP_FQ_FORWARD, QDROP_FQ_BACKWARD, QDROP_LSQ_BACKWARD)


def _zp(zero_point: Tensor, quant_min: int, quant_max: int, clamp: bool) -> Tensor:
    # rounding the [C]-sized zero point is a tiny device op: no host sync
    return _ref.rounded_zero_point(zero_point, quant_min, quant_max, clamp).contiguous()


def _param(t: Tensor) -> Tensor:
    return t.detach().float().contiguous()


def _reduce_like(grad: Tensor, like: Tensor) -> Tensor:
    return grad.to(like.dtype).reshape(like.shape)


def _grads_like_params(dy, x, scale, zero_point, *rest):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(scale),
            torch.empty_like(zero_point))


# ---------------------------------------------------------------- fake_quant (straight-through)

def _fake_quant_impl(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                     axis: Optional[int]) -> Tensor:
    fn = dispatch("fq_forward", x.device)
    return fn(x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, False), quant_min, quant_max, axis)


def _fake_quant_backward_impl(dy: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                              quant_max: int, axis: Optional[int]) -> Tensor:
    fn = dispatch("fq_backward", x.device)
    return fn(dy.contiguous(), x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, False),
              quant_min, quant_max, axis)


_fake_quant = define_differentiable_op("fake_quant", _fake_quant_impl, _empty_like_x)
_fake_quant_backward = define_differentiable_op("fake_quant_backward", _fake_quant_backward_impl, _empty_like_dy_x)


def _fq_setup(ctx, inputs, output):
    x, scale, zero_point, quant_min, quant_max, axis = inputs[:6]
    ctx.save_for_backward(x, scale, zero_point)
    ctx.args = (quant_min, quant_max, axis)


def _fq_backward(ctx, dy):
    x, scale, zero_point = ctx.saved_tensors
    return call(ctx, _fake_quant_backward)(dy, x, scale, zero_point, *ctx.args), None, None, None, None, None


fake_quant = with_eager_path(_fake_quant, _fq_setup, _fq_backward)


# ---------------------------------------------------------------- lsq_fake_quant (learnable)

def _lsq_fake_quant_impl(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                         axis: Optional[int], grad_factor: float) -> Tensor:
    fn = dispatch("fq_forward", x.device)
    return fn(x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, True), quant_min, quant_max, axis)


def _lsq_fake_quant_backward_impl(dy: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                                  quant_max: int, axis: Optional[int], grad_factor: float
                                  ) -> Tuple[Tensor, Tensor, Tensor]:
    fn = dispatch("lsq_backward", x.device)
    dx, dscale, dzp = fn(dy.contiguous(), x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, True),
                         quant_min, quant_max, axis, grad_factor)
    return dx, _reduce_like(dscale, scale), _reduce_like(dzp, zero_point)


_lsq_fake_quant = define_differentiable_op("lsq_fake_quant", _lsq_fake_quant_impl, _empty_like_x)
_lsq_fake_quant_backward = define_differentiable_op("lsq_fake_quant_backward", _lsq_fake_quant_backward_impl,
                                                    _grads_like_params)


def _lsq_setup(ctx, inputs, output):
    x, scale, zero_point, quant_min, quant_max, axis, grad_factor = inputs
    ctx.save_for_backward(x, scale, zero_point)
    ctx.args = (quant_min, quant_max, axis, grad_factor)


def _lsq_backward(ctx, dy):
    x, scale, zero_point = ctx.saved_tensors
    qmin, qmax, axis, gf = ctx.args
    if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        # frozen quantization parameters: the cheaper straight-through kernel is enough
        zp = _ref.rounded_zero_point(zero_point, qmin, qmax, clamp=True)
        return call(ctx, _fake_quant_backward)(dy, x, scale, zp, qmin, qmax, axis), None, None, None, None, None, None
    dx, dscale, dzp = call(ctx, _lsq_fake_quant_backward)(dy, x, scale, zero_point, qmin, qmax, axis, gf)
    return dx, dscale, dzp if ctx.needs_input_grad[2] else None, None, None, None, None


lsq_fake_quant = with_eager_path(_lsq_fake_quant, _lsq_setup, _lsq_backward)


# ---------------------------------------------------------------- QDrop fused into fake-quant

def _qdrop_fake_quant_impl(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                           axis: Optional[int], p: float, seed: int, offset: int, learnable: bool,
                           grad_factor: float) -> Tensor:
    fn = dispatch("qdrop_fq_forward", x.device)
    return fn(x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, learnable), quant_min, quant_max,
              axis, p, seed, offset)


def _qdrop_fake_quant_backward_impl(dy: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                                    quant_max: int, axis: Optional[int], p: float, seed: int, offset: int,
                                    learnable: bool) -> Tensor:
    fn = dispatch("qdrop_fq_backward", x.device)
    return fn(dy.contiguous(), x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, learnable),
              quant_min, quant_max, axis, p, seed, offset)


def _qdrop_lsq_fake_quant_backward_impl(dy: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                                        quant_max: int, axis: Optional[int], grad_factor: float, p: float,
                                        seed: int, offset: int) -> Tuple[Tensor, Tensor, Tensor]:
    fn = dispatch("qdrop_lsq_backward", x.device)
    dx, dscale, dzp = fn(dy.contiguous(), x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, True),
                         quant_min, quant_max, axis, grad_factor, p, seed, offset)
    return dx, _reduce_like(dscale, scale), _reduce_like(dzp, zero_point)


_qdrop_fake_quant = define_differentiable_op("qdrop_fake_quant", _qdrop_fake_quant_impl, _empty_like_x)
_qdrop_fake_quant_backward = define_differentiable_op("qdrop_fake_quant_backward", _qdrop_fake_quant_backward_impl,
                                                      _empty_like_dy_x)
_qdrop_lsq_fake_quant_backward = define_differentiable_op("qdrop_lsq_fake_quant_backward",
                                                          _qdrop_lsq_fake_quant_backward_impl, _grads_like_params)


def _qdrop_setup(ctx, inputs, output):
    x, scale, zero_point, quant_min, quant_max, axis, p, seed, offset, learnable, grad_factor = inputs
    ctx.save_for_backward(x, scale, zero_point)
    ctx.args = (quant_min, quant_max, axis, p, seed, offset, learnable, grad_factor)


def _qdrop_backward(ctx, dy):
    x, scale, zero_point = ctx.saved_tensors
    qmin, qmax, axis, p, seed, offset, learnable, gf = ctx.args
    none8 = (None,) * 8
    if not learnable or not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        dx = call(ctx, _qdrop_fake_quant_backward)(dy, x, scale, zero_point, qmin, qmax, axis, p, seed, offset,
                                                   learnable)
        return (dx, None, None) + none8
    dx, dscale, dzp = call(ctx, _qdrop_lsq_fake_quant_backward)(dy, x, scale, zero_point, qmin, qmax, axis, gf, p,
                                                                seed, offset)
    return (dx, dscale, dzp if ctx.needs_input_grad[2] else None) + none8


qdrop_fake_quant = with_eager_path(_qdrop_fake_quant, _qdrop_setup, _qdrop_backward)
