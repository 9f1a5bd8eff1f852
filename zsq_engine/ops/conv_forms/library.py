"""The torch.library ops of the conv-forms family: ``zsq::conv3x3_narrow`` and
``zsq::upsample2x_conv3x3`` (``torch.library.custom_op``), their fakes and their autograd.

The forward is the re-expressed form (:mod:`.forms`); the registered gradient formula is the plain
convolution's (:mod:`.reference`): torch.compile traces it as a few ATen convolution gradients.
The eager public functions (``__init__.py``) do not go through these ops: they run the forms under
autograd directly, whose backward is itself the fast GEMM / phase form (the forms were measured
forward + backward, docs/architecture.md)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import forms
from . import reference as _ref


def _out_like(x: Tensor, weight: Tensor, scale: int) -> Tensor:
    n, _, h, w = x.shape
    return x.new_empty((n, weight.shape[0], scale * h, scale * w))


@torch.library.custom_op("zsq::conv3x3_narrow", mutates_args=())
def conv3x3_narrow(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return forms.conv3x3_narrow(x, weight, bias)


@torch.library.custom_op("zsq::upsample2x_conv3x3", mutates_args=())
def upsample2x_conv3x3(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return forms.upsample2x_conv3x3(x, weight, bias)


conv3x3_narrow.register_fake(lambda x, weight, bias: _out_like(x, weight, 1))
upsample2x_conv3x3.register_fake(lambda x, weight, bias: _out_like(x, weight, 2))


def _setup(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward_of(formula):
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        return formula(dy, x, weight, needs)

    return backward


conv3x3_narrow.register_autograd(_backward_of(_ref.conv3x3_narrow_backward), setup_context=_setup)
upsample2x_conv3x3.register_autograd(_backward_of(_ref.upsample2x_conv3x3_backward), setup_context=_setup)
OPS = (conv3x3_narrow, upsample2x_conv3x3)
