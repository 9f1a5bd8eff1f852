"""``self_attention(u) = softmax(u u^T) u`` per batch entry, without storing the L x L matrix.

ZAQ's spatial relation (the position attention of DANet on channel-normalised features) is this
op on ``u = normalize(f).view(N, C, HW).transpose(1, 2)``: at the first stage of a 28x28 model
that is a 784 x 784 matrix per image, 157 MB for a batch of 64, which the plain autograd
expression writes, reads back and keeps for the backward pass. Here the forward keeps only the
output and one log-sum-exp per row; the backward recomputes the probabilities a row (C++) or a
row block (reference) at a time.

Backends: ``cpu`` = the C++ kernel (float32; other dtypes go to the reference), ``reference``
= row blocks in PyTorch (any device and dtype). On CUDA, callers that want a fused kernel use
``torch.nn.functional.scaled_dot_product_attention`` (FlashAttention; see
:func:`zsq_engine.qat.losses.spatial_relation`).
"""
from __future__ import annotations

import torch

from ..opspec import checks
from .dispatch import dispatch, register
from .reference import attention as _ref_attention

__all__ = ["self_attention"]

register("self_attention_forward", "reference")(_ref_attention.self_attention_forward)
register("self_attention_backward", "reference")(_ref_attention.self_attention_backward)


def self_attention(u: torch.Tensor) -> torch.Tensor:
    """``softmax(u[b] @ u[b].T, dim=-1) @ u[b]`` for every ``b`` of ``u`` ``[B, L, C]`` (float),
    differentiable with respect to ``u`` (as query, key and value at once). Scale 1, no mask."""
    checks.check_float_tensor("u", u)
    if u.dim() != 3:
        raise ValueError(f"u must be [batch, L, C], got shape {tuple(u.shape)}")
    return _SelfAttention.apply(u)


class _SelfAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u):
        u = u.contiguous()
        out, lse = dispatch("self_attention_forward", u.device)(u)
        ctx.save_for_backward(u, out, lse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        u, out, lse = ctx.saved_tensors
        return dispatch("self_attention_backward", u.device)(u, out, lse, grad_out.contiguous())
