"""Drop-in replacements for the research code's ``round_ste`` and ``lp_loss`` helpers.

``round_ste(x)``: the original ``(x.round() - x).detach() + x`` costs three full passes forward
(round, subtract, add) and keeps them for autograd; its value is exactly ``round(x)`` for every
finite x (``round(x) - x`` is exact by Sterbenz' lemma, adding x back is then exact) and its
gradient is the identity. Here: one ``torch.round`` pass, identity backward, nothing saved.
Only ``+-inf`` differs: the original gives NaN (``inf - inf``), this returns ``+-inf``.

``lp_loss(pred, tgt, p=2.0, reduction='none')``: ``|pred - tgt|^p`` summed over dim 1 then
averaged (``'none'``, the research code's name for it) or averaged over everything (any other
value). For ``p == 2`` the ``abs`` pass is dropped: ``|d|^2 == d * d`` bit for bit and the
gradient ``2 g d`` equals the original's ``g * 2|d| * sign(d)`` exactly. Other ``p`` use the
original expression.
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
    err = diff.square() if p == 2 else diff.abs().pow(p)
    if reduction == "none":
        if err.dim() < 2:
            raise ValueError(f"reduction='none' sums over dim 1: pred must have >= 2 dimensions, got shape "
                             f"{tuple(pred.shape)}")
        return err.sum(1).mean()
    return err.mean()
