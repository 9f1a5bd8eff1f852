"""Helpers shared by the compat forwards: which inputs the fused ops take, zero-point layout.

The research quantizers divide (``x / delta``) where our fused ops multiply by ``1/scale``; the
two differ in the last bit of ``x / delta``, which flips a rounding now and then. So every
compat forward keeps the original's own division (and the final ``* delta``) as torch ops and
sends only the quantize / clamp / straight-through part to the fused op with ``scale = 1``:
``t * 1 == t`` exactly, so the fused part reproduces ``clamp(round(t) + zp, qmin, qmax) - zp``
bit for bit, and autograd differentiates the division and the product exactly as it does in the
original, so the gradients of ``x`` and of a learnable ``delta`` are the original's bits too.
For a learnable one-element step, :func:`divide_by_step` keeps the division but gives it a
backward that reaches the same bits in two full-size passes fewer.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

Number = Union[int, float]


def fusable_input(x) -> bool:
    """Whether the fused ops take ``x`` (a float tensor of a kernel dtype); else the original runs."""
    return isinstance(x, torch.Tensor) and x.dtype in FUSED_DTYPES and x.numel() > 0


def zero_point_layout(zero_point, like: torch.Tensor) -> Optional[Tuple[Union[torch.Tensor, Number], Optional[int]]]:
    """``(zero_point for ops.fake_quant, axis)`` of a zero point broadcast against ``like``.

    One element: per-tensor (axis None). Otherwise exactly one non-1 dimension that lines up
    (numpy broadcasting, aligned from the right) with a dimension of ``like`` of the same size:
    per-channel along that axis, flattened to ``[C]``. Anything else: None (run the original).
    """
    if isinstance(zero_point, bool):
        return None
    if isinstance(zero_point, (int, float)):
        return zero_point, None
    if not isinstance(zero_point, torch.Tensor) or zero_point.dim() > like.dim():
        return None
    if zero_point.numel() == 1:
        return zero_point.reshape(1), None
    non_one = [d for d, n in enumerate(zero_point.shape) if n != 1]
    if len(non_one) != 1:
        return None
    axis = like.dim() - zero_point.dim() + non_one[0]
    if like.shape[axis] != zero_point.shape[non_one[0]]:
        return None
    return zero_point.reshape(-1), axis


def integral(zero_point) -> bool:
    """Whether a zero point holds integers (the fused op rounds it; the originals never need to).

    Values are read only where that costs no device synchronisation (python numbers, CPU
    tensors); a CUDA zero point is trusted, as every supported style stores a rounded one.
    """
    if isinstance(zero_point, (int, float)):
        return float(zero_point).is_integer()
    if zero_point.device.type != "cpu" or not zero_point.is_floating_point():
        return True
    return bool(torch.equal(zero_point, torch.round(zero_point)))


def needs_grad(t) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled()


class _DivideByStep(torch.autograd.Function):
    """``x / step`` for a one-element learnable ``step``, with autograd's own gradient bits.

    autograd's division backward recomputes ``x / step`` for the step's gradient and negates the
    full-size incoming gradient: ``sum(-g * ((x / step) / step))``. Here the quotient saved by
    the forward (bit-equal to ``x / step``, and already kept alive by the fused op that consumes
    it) is reused and the one-element sum is negated instead (negation is exact and rounding is
    symmetric, so ``sum(-v) == -sum(v)`` bit for bit): two full-size passes fewer per backward.
    """

    @staticmethod
    def forward(ctx, x, step):
        quotient = x / step
        ctx.save_for_backward(quotient, step)
        return quotient

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        quotient, step = ctx.saved_tensors
        grad_x = grad / step if ctx.needs_input_grad[0] else None
        grad_step = None
        if ctx.needs_input_grad[1]:
            grad_step = (-(grad * (quotient / step)).sum()).reshape(step.shape)
        return grad_x, grad_step


def divide_by_step(x: torch.Tensor, step) -> torch.Tensor:
    """``x / step`` as the research code writes it; cheaper backward for a learnable scalar step."""
    if (needs_grad(step) and step.numel() == 1 and step.dim() <= x.dim()
            and torch.result_type(x, step) == x.dtype):
        return _DivideByStep.apply(x, step)
    return x / step


def unit_scale(zero_point):
    """Scale 1 shaped like the zero point the fused op gets (``t * 1 == t`` exactly)."""
    if isinstance(zero_point, torch.Tensor):
        return torch.ones(zero_point.shape, dtype=torch.float32, device=zero_point.device)
    return 1.0
