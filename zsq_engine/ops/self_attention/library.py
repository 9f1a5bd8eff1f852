"""The torch.library ops of the self-attention family (namespace ``zsq``).

Primitives (:func:`..schema.define_op`): ``self_attention_forward`` -> (out, lse) and
``self_attention_backward``; the same names in ``reference.py`` and ``csrc/bind/self_attention.cpp``
(``_C.<name>_cpu``). Differentiable op: ``zsq::self_attention`` -> (out, lse), ``lse`` (one
log-sum-exp per row) kept for the backward instead of the L x L matrix.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ..dispatch import dispatch, register
from ..schema import define_differentiable_op, define_op, with_eager_path
from . import reference as _ref


def _forward_fake(u):
    return torch.empty_like(u, memory_format=torch.contiguous_format), u.new_empty(u.shape[:2])


register("self_attention_forward", "reference")(_ref.self_attention_forward)
register("self_attention_backward", "reference")(_ref.self_attention_backward)
SELF_ATTENTION_FORWARD = define_op("self_attention_forward", "(Tensor u) -> (Tensor, Tensor)",
                                   _ref.self_attention_forward, _forward_fake)
SELF_ATTENTION_BACKWARD = define_op(
    "self_attention_backward", "(Tensor u, Tensor out, Tensor lse, Tensor grad_out) -> Tensor",
    _ref.self_attention_backward,
    lambda u, out, lse, grad_out: torch.empty_like(u, memory_format=torch.contiguous_format))
PRIMITIVES = (SELF_ATTENTION_FORWARD, SELF_ATTENTION_BACKWARD)


def _self_attention_impl(u: Tensor) -> Tuple[Tensor, Tensor]:
    return dispatch("self_attention_forward", u.device)(u.contiguous())


_self_attention = define_differentiable_op("self_attention", _self_attention_impl, _forward_fake)


def _setup(ctx, inputs, output):
    out, lse = output
    ctx.save_for_backward(inputs[0].contiguous(), out, lse)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    u, out, lse = ctx.saved_tensors
    backward = dispatch("self_attention_backward", u.device) if getattr(ctx, "eager", False) else SELF_ATTENTION_BACKWARD
    return backward(u, out, lse, grad_out.contiguous())


self_attention = with_eager_path(_self_attention, _setup, _backward)
