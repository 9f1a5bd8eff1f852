"""Drop-in replacements for the research code's ``round_ste`` and ``lp_loss`` helpers.

``round_ste(x)``: the original ``(x.round() - x).detach() + x`` costs three full passes forward
(round, subtract, add) and keeps them for autograd; its value is exactly ``round(x)`` for every
finite x (``round(x) - x`` is exact by Sterbenz' lemma, adding x back is then exact) and its
gradient is the identity. Here: one ``torch.round`` pass, identity backward, nothing saved.
Only ``+-inf`` differs: the original gives NaN (``inf - inf``), this returns ``+-inf``.

``lp_loss(pred, tgt, p=2.0, reduction='none')``: ``|pred - tgt|^p`` summed over dim 1 then
averaged (``'none'``, the research code's name for it) or averaged over everything (any other
value). For ``p == 2``: ``d * d`` (``|d|^2`` bit for bit) in one pass, and a backward that is a
single product ``d * (2 * (g / count))``; the original's chain (mean and sum backward, then
``pow``'s backward, which copies ``|d|``, doubles it and multiplies, then ``abs``'s sign product)
rounds the same real number once, so the gradient is bit-equal (multiplying by 2 or by a sign
is exact). Other ``p`` use the original expression.
"""
from __future__ import annotations

import torch


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _SquaredError(torch.autograd.Function):
    """``mean(sum_dim1(d * d))`` (``per_row``) or ``mean(d * d)``, with a one-pass backward."""

    @staticmethod
    def forward(ctx, diff, per_row):
        err = diff * diff
        loss = err.sum(1).mean() if per_row else err.mean()
        ctx.count = err.numel() // err.shape[1] if per_row else err.numel()
        ctx.save_for_backward(diff)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (diff,) = ctx.saved_tensors
        return diff * (2 * (grad / ctx.count)), None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` (half to even) with a straight-through (identity) gradient; any float tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    return _RoundSTE.apply(x)


def lp_loss(pred: torch.Tensor, tgt: torch.Tensor, p: float = 2.0, reduction: str = "none") -> torch.Tensor:
    """Lp reconstruction loss with the research code's contract (see the module docstring).

    ``pred`` and ``tgt``: tensors of one shape with at least 2 dimensions for ``reduction='none'``.
    """
    for name, t in (("pred", pred), ("tgt", tgt)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"p must be a number, got {type(p).__name__}")
    diff = pred - tgt
    if reduction == "none" and diff.dim() < 2:
        raise ValueError(f"reduction='none' sums over dim 1: pred - tgt must have >= 2 dimensions, got shape "
                         f"{tuple(diff.shape)}")
    if p == 2 and diff.numel() > 0:
        return _SquaredError.apply(diff, reduction == "none")
    err = diff.abs().pow(p)
    return err.sum(1).mean() if reduction == "none" else err.mean()
