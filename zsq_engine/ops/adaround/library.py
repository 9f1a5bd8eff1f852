"""The torch.library ops of the AdaRound family (namespace ``zsq``).

Primitives (:func:`..schema.define_op`): ``adaround_forward``, ``adaround_backward``,
``adaround_reg_forward``, ``adaround_reg_backward``; the same names in ``reference.py``,
``kernels/adaround.py`` and ``csrc/bind/adaround.cpp`` (``_C.<name>_cpu``).

Differentiable ops (:func:`..schema.define_differentiable_op`, eager fast path):
``adaround_fake_quant`` and ``adaround_regularizer`` with their backward ops.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..dispatch import dispatch, register
from ..schema import call, define_differentiable_op, define_op, with_eager_path
from . import reference as _ref

_QPARAMS = "Tensor scale, Tensor zero_point, int quant_min, int quant_max, int? axis"


def _primitive(name: str, schema: str, fake):
    reference = getattr(_ref, name)
    register(name, "reference")(reference)
    return define_op(name, schema, reference, fake)


ADAROUND_FORWARD = _primitive(
    "adaround_forward", f"(Tensor w_floor, Tensor alpha, {_QPARAMS}, bool hard) -> Tensor",
    lambda w_floor, *rest: torch.empty_like(w_floor, memory_format=torch.contiguous_format))
ADAROUND_BACKWARD = _primitive(
    "adaround_backward", f"(Tensor dy, Tensor w_floor, Tensor alpha, {_QPARAMS}) -> (Tensor, Tensor)",
    lambda dy, w_floor, alpha, scale, *rest: (torch.empty_like(alpha, memory_format=torch.contiguous_format),
                                              scale.new_empty(scale.shape, dtype=torch.float32)))
ADAROUND_REG_FORWARD = _primitive(
    "adaround_reg_forward", "(Tensor alpha, float beta) -> Tensor",
    lambda alpha, beta: alpha.new_empty((), dtype=torch.float32))
ADAROUND_REG_BACKWARD = _primitive(
    "adaround_reg_backward", "(Tensor grad_out, Tensor alpha, float beta) -> Tensor",
    lambda grad_out, alpha, beta: torch.empty_like(alpha, memory_format=torch.contiguous_format))
PRIMITIVES = (ADAROUND_FORWARD, ADAROUND_BACKWARD, ADAROUND_REG_FORWARD, ADAROUND_REG_BACKWARD)


def _param(t: Tensor) -> Tensor:
    return t.detach().float().contiguous()


def _reduce_like(grad: Tensor, like: Tensor) -> Tensor:
    return grad.to(like.dtype).reshape(like.shape)


# ---------------------------------------------------------------- adaround_fake_quant

def _adaround_impl(w_floor: Tensor, alpha: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                   quant_max: int, axis: Optional[int], hard: bool) -> Tensor:
    fn = dispatch("adaround_forward", w_floor.device)
    return fn(w_floor.contiguous(), alpha.contiguous(), _param(scale), _param(zero_point), quant_min, quant_max,
              axis, hard)


def _adaround_backward_op_impl(dy: Tensor, w_floor: Tensor, alpha: Tensor, scale: Tensor, zero_point: Tensor,
                               quant_min: int, quant_max: int, axis: Optional[int]) -> Tuple[Tensor, Tensor]:
    fn = dispatch("adaround_backward", w_floor.device)
    dalpha, dscale = fn(dy.contiguous(), w_floor.contiguous(), alpha.contiguous(), _param(scale), _param(zero_point),
                        quant_min, quant_max, axis)
    return dalpha.to(alpha.dtype), _reduce_like(dscale, scale)


_adaround = define_differentiable_op(
    "adaround_fake_quant", _adaround_impl,
    lambda w_floor, *rest: torch.empty_like(w_floor, memory_format=torch.contiguous_format))
_adaround_backward_op = define_differentiable_op(
    "adaround_fake_quant_backward", _adaround_backward_op_impl,
    lambda dy, w_floor, alpha, scale, *rest: (torch.empty_like(alpha, memory_format=torch.contiguous_format),
                                              torch.empty_like(scale)))


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
    dalpha, dscale = call(ctx, _adaround_backward_op)(dy, w_floor, alpha, scale, zero_point, qmin, qmax, axis)
    return (None, dalpha, dscale) + none5


adaround_fake_quant = with_eager_path(_adaround, _adaround_setup, _adaround_backward)


# ---------------------------------------------------------------- adaround_regularizer

def _adaround_reg_impl(alpha: Tensor, beta: float) -> Tensor:
    return dispatch("adaround_reg_forward", alpha.device)(alpha.contiguous(), beta)


def _adaround_reg_backward_op_impl(grad_out: Tensor, alpha: Tensor, beta: float) -> Tensor:
    fn = dispatch("adaround_reg_backward", alpha.device)
    return fn(grad_out.float().contiguous(), alpha.contiguous(), beta).to(alpha.dtype)


_adaround_reg = define_differentiable_op("adaround_regularizer", _adaround_reg_impl,
                                         lambda alpha, beta: alpha.new_empty((), dtype=torch.float32))
_adaround_reg_backward_op = define_differentiable_op(
    "adaround_regularizer_backward", _adaround_reg_backward_op_impl,
    lambda grad_out, alpha, beta: torch.empty_like(alpha, memory_format=torch.contiguous_format))


def _reg_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.beta = inputs[1]


def _reg_backward(ctx, grad_out):
    (alpha,) = ctx.saved_tensors
    return call(ctx, _adaround_reg_backward_op)(grad_out, alpha, ctx.beta), None


adaround_regularizer = with_eager_path(_adaround_reg, _reg_setup, _reg_backward)
