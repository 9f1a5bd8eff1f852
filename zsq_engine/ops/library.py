"""torch.library registration of the training-path ops (namespace ``zsq``).

Each public op is a ``torch.library.custom_op`` with a fake (meta) implementation, so
``torch.compile`` traces it without a graph break, and an autograd formula registered with
``register_autograd`` whose backward is itself a custom op. The real implementations of both
directions are *primitives* (plain forward / backward functions without autograd) chosen per
call by :mod:`.dispatch`: Triton for CUDA tensors, the C++ extension for CPU tensors, the
pure-PyTorch reference otherwise. The reference primitives live in :mod:`.reference` and every
kernel is tested against them.

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


# ---------------------------------------------------------------- fake_quant (straight-through)

@torch.library.custom_op("zsq::fake_quant", mutates_args=())
def _fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                axis: Optional[int]) -> Tensor:
    fn = dispatch("fq_forward", x.device)
    return fn(x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, False), quant_min, quant_max, axis)


@_fake_quant.register_fake
def _(x, scale, zero_point, quant_min, quant_max, axis):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("zsq::fake_quant_backward", mutates_args=())
def _fake_quant_backward(dy: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                         quant_max: int, axis: Optional[int]) -> Tensor:
    fn = dispatch("fq_backward", x.device)
    return fn(dy.contiguous(), x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, False),
              quant_min, quant_max, axis)


@_fake_quant_backward.register_fake
def _(dy, x, scale, zero_point, quant_min, quant_max, axis):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fq_setup(ctx, inputs, output):
    x, scale, zero_point, quant_min, quant_max, axis = inputs[:6]
    ctx.save_for_backward(x, scale, zero_point)
    ctx.args = (quant_min, quant_max, axis)


def _fq_backward(ctx, dy):
    x, scale, zero_point = ctx.saved_tensors
    return _fake_quant_backward(dy, x, scale, zero_point, *ctx.args), None, None, None, None, None


_fake_quant.register_autograd(_fq_backward, setup_context=_fq_setup)


# ---------------------------------------------------------------- lsq_fake_quant (learnable)

@torch.library.custom_op("zsq::lsq_fake_quant", mutates_args=())
def _lsq_fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                    axis: Optional[int], grad_factor: float) -> Tensor:
    fn = dispatch("fq_forward", x.device)
    return fn(x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, True), quant_min, quant_max, axis)


@_lsq_fake_quant.register_fake
def _(x, scale, zero_point, quant_min, quant_max, axis, grad_factor):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("zsq::lsq_fake_quant_backward", mutates_args=())
def _lsq_fake_quant_backward(dy: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                             quant_max: int, axis: Optional[int], grad_factor: float
                             ) -> Tuple[Tensor, Tensor, Tensor]:
    fn = dispatch("lsq_backward", x.device)
    dx, dscale, dzp = fn(dy.contiguous(), x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, True),
                         quant_min, quant_max, axis, grad_factor)
    return dx, _reduce_like(dscale, scale), _reduce_like(dzp, zero_point)


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
        return _fake_quant_backward(dy, x, scale, zp, qmin, qmax, axis), None, None, None, None, None, None
    dx, dscale, dzp = _lsq_fake_quant_backward(dy, x, scale, zero_point, qmin, qmax, axis, gf)
    return dx, dscale, dzp if ctx.needs_input_grad[2] else None, None, None, None, None


_lsq_fake_quant.register_autograd(_lsq_backward, setup_context=_lsq_setup)


# ---------------------------------------------------------------- QDrop fused into fake-quant

@torch.library.custom_op("zsq::qdrop_fake_quant", mutates_args=())
def _qdrop_fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                      axis: Optional[int], p: float, seed: int, offset: int, learnable: bool,
                      grad_factor: float) -> Tensor:
    fn = dispatch("qdrop_fq_forward", x.device)
    return fn(x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, learnable), quant_min, quant_max,
              axis, p, seed, offset)


@_qdrop_fake_quant.register_fake
def _(x, scale, zero_point, quant_min, quant_max, axis, p, seed, offset, learnable, grad_factor):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("zsq::qdrop_fake_quant_backward", mutates_args=())
def _qdrop_fake_quant_backward(dy: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                               quant_max: int, axis: Optional[int], p: float, seed: int, offset: int,
                               learnable: bool) -> Tensor:
    fn = dispatch("qdrop_fq_backward", x.device)
    return fn(dy.contiguous(), x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, learnable),
              quant_min, quant_max, axis, p, seed, offset)


@_qdrop_fake_quant_backward.register_fake
def _(dy, x, scale, zero_point, quant_min, quant_max, axis, p, seed, offset, learnable):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("zsq::qdrop_lsq_fake_quant_backward", mutates_args=())
def _qdrop_lsq_backward_op(dy: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                           quant_max: int, axis: Optional[int], grad_factor: float, p: float, seed: int,
                           offset: int) -> Tuple[Tensor, Tensor, Tensor]:
    fn = dispatch("qdrop_lsq_backward", x.device)
    dx, dscale, dzp = fn(dy.contiguous(), x.contiguous(), _param(scale), _zp(zero_point, quant_min, quant_max, True),
                         quant_min, quant_max, axis, grad_factor, p, seed, offset)
    return dx, _reduce_like(dscale, scale), _reduce_like(dzp, zero_point)


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
        dx = _qdrop_fake_quant_backward(dy, x, scale, zero_point, qmin, qmax, axis, p, seed, offset, learnable)
        return (dx, None, None) + none8
    dx, dscale, dzp = _qdrop_lsq_backward_op(dy, x, scale, zero_point, qmin, qmax, axis, gf, p, seed, offset)
    return (dx, dscale, dzp if ctx.needs_input_grad[2] else None) + none8


_qdrop_fake_quant.register_autograd(_qdrop_backward, setup_context=_qdrop_setup)


# ---------------------------------------------------------------- AdaRound

@torch.library.custom_op("zsq::adaround_fake_quant", mutates_args=())
def _adaround(w_floor: Tensor, alpha: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
              axis: Optional[int], hard: bool) -> Tensor:
    fn = dispatch("adaround_forward", w_floor.device)
    return fn(w_floor.contiguous(), alpha.contiguous(), _param(scale), _param(zero_point), quant_min, quant_max,
              axis, hard)


@_adaround.register_fake
def _(w_floor, alpha, scale, zero_point, quant_min, quant_max, axis, hard):
    return torch.empty_like(w_floor, memory_format=torch.contiguous_format)


@torch.library.custom_op("zsq::adaround_fake_quant_backward", mutates_args=())
def _adaround_backward_op(dy: Tensor, w_floor: Tensor, alpha: Tensor, scale: Tensor, zero_point: Tensor,
                          quant_min: int, quant_max: int, axis: Optional[int]) -> Tuple[Tensor, Tensor]:
    fn = dispatch("adaround_backward", w_floor.device)
    dalpha, dscale = fn(dy.contiguous(), w_floor.contiguous(), alpha.contiguous(), _param(scale), _param(zero_point),
                        quant_min, quant_max, axis)
    return dalpha.to(alpha.dtype), _reduce_like(dscale, scale)


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
    dalpha, dscale = _adaround_backward_op(dy, w_floor, alpha, scale, zero_point, qmin, qmax, axis)
    return (None, dalpha, dscale) + none5


_adaround.register_autograd(_adaround_backward, setup_context=_adaround_setup)


@torch.library.custom_op("zsq::adaround_regularizer", mutates_args=())
def _adaround_reg(alpha: Tensor, beta: float) -> Tensor:
    return dispatch("adaround_reg_forward", alpha.device)(alpha.contiguous(), beta)


@_adaround_reg.register_fake
def _(alpha, beta):
    return alpha.new_empty((), dtype=torch.float32)


@torch.library.custom_op("zsq::adaround_regularizer_backward", mutates_args=())
def _adaround_reg_backward_op(grad_out: Tensor, alpha: Tensor, beta: float) -> Tensor:
    fn = dispatch("adaround_reg_backward", alpha.device)
    return fn(grad_out.float().contiguous(), alpha.contiguous(), beta).to(alpha.dtype)


@_adaround_reg_backward_op.register_fake
def _(grad_out, alpha, beta):
    return torch.empty_like(alpha, memory_format=torch.contiguous_format)


def _reg_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.beta = inputs[1]


def _reg_backward(ctx, grad_out):
    (alpha,) = ctx.saved_tensors
    return _adaround_reg_backward_op(grad_out, alpha, ctx.beta), None


_adaround_reg.register_autograd(_reg_backward, setup_context=_reg_setup)


# ---------------------------------------------------------------- scale search (no gradient)

@torch.library.custom_op("zsq::scale_search", mutates_args=())
def _scale_search(x: Tensor, quant_min: int, quant_max: int, axis: Optional[int], num_candidates: int, p: float,
                  symmetric: bool) -> Tuple[Tensor, Tensor]:
    fn = dispatch("scale_search", x.device)
    scale, zp = fn(x.detach().contiguous(), quant_min, quant_max, axis, num_candidates, p, symmetric)
    return scale.float().contiguous(), zp.float().contiguous()


@_scale_search.register_fake
def _(x, quant_min, quant_max, axis, num_candidates, p, symmetric):
    channels = 1 if axis is None else x.shape[axis]
    return x.new_empty((channels,), dtype=torch.float32), x.new_empty((channels,), dtype=torch.float32)


fake_quant = _fake_quant
lsq_fake_quant = _lsq_fake_quant
qdrop_fake_quant = _qdrop_fake_quant
adaround_fake_quant = _adaround
adaround_regularizer = _adaround_reg
scale_search = _scale_search
