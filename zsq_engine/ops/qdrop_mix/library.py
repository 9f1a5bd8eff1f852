"""The torch.library op of the QDrop-mix family: ``zsq::qdrop_mix`` (:func:`..schema.define_op`),
differentiable with a formula that runs the same primitive (the mask is recomputed, never
stored: d x_q = mix(dy, 0), d x_fp = mix(0, dy)). The same name in ``reference.py``,
``kernels/qdrop_mix.py`` and ``csrc/bind/qdrop_mix.cpp`` (``_C.qdrop_mix_cpu``)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..dispatch import dispatch, register
from ..schema import call, define_op, with_eager_path
from . import reference as _ref

register("qdrop_mix", "reference")(_ref.qdrop_mix)
QDROP_MIX = define_op("qdrop_mix", "(Tensor x_q, Tensor x_fp, float p, int seed, int offset) -> Tensor",
                      _ref.qdrop_mix,
                      lambda x_q, x_fp, p, seed, offset: torch.empty_like(x_q, memory_format=torch.contiguous_format))
PRIMITIVES = (QDROP_MIX,)


def _qdrop_mix_impl(x_q: Tensor, x_fp: Tensor, p: float, seed: int, offset: int) -> Tensor:
    return dispatch("qdrop_mix", x_q.device)(x_q.contiguous(), x_fp.contiguous(), p, seed, offset)


def _setup(ctx, inputs, output):
    ctx.args = tuple(inputs[2:])


def _backward(ctx, dy):
    mix = call(ctx, QDROP_MIX)
    dy = dy.contiguous()
    zero = torch.zeros_like(dy)
    d_q = mix(dy, zero, *ctx.args) if ctx.needs_input_grad[0] else None
    d_fp = mix(zero, dy, *ctx.args) if ctx.needs_input_grad[1] else None
    return d_q, d_fp, None, None, None


qdrop_mix = with_eager_path(QDROP_MIX, _setup, _backward, impl=_qdrop_mix_impl)
