"""Distillation losses of the generator-based QAT methods (pure tensor functions, no state).

* :func:`kd_kl` - temperature-scaled KL(teacher || student) * T^2 (GDFQ, HAST).
* :func:`spatial_relation` / :func:`channel_relation` / :func:`relation_loss` - ZAQ's
  intermediate-level discrepancy between stage features.
* :func:`channel_attention` / :func:`feature_alignment` - HAST's feature alignment.

Shapes: logits ``[N, K]``; features ``[N, C, H, W]`` (fp32/fp16/bf16; computed in their dtype).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import ops
from ..ops.self_attention import reference as attention_reference

__all__ = ["RELATION_GAMMA", "kd_kl", "spatial_relation", "channel_relation", "relation_loss",
           "channel_attention", "feature_alignment", "SPATIAL_IMPLS"]

# DANet-style attention modules with the residual weight fixed: r = gamma * attention(x) + x.
RELATION_GAMMA = 0.1
SPATIAL_IMPLS = ("auto", "fused", "sdpa", "chunked")
# Query rows per block of the 'chunked' spatial relation.
_CHUNK_ROWS = 256
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what ops.self_attention takes


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))`` averaged over the batch (``batchmean``).

    The T^2 factor keeps the gradient magnitude independent of T (Hinton et al.).
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"student_logits and teacher_logits must both be [N, K] of one shape, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def _check_feature(name: str, f: torch.Tensor) -> None:
    if not isinstance(f, torch.Tensor) or f.dim() != 4 or not f.is_floating_point():
        raise ValueError(f"{name} must be a float tensor [N, C, H, W], got "
                         f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")


def spatial_relation(f: torch.Tensor, impl: str = "auto", chunk_rows: Optional[int] = None) -> torch.Tensor:
    """ZAQ's spatial relation of a feature map: ``[N, C, H, W] -> [N, C, H*W]``.

    With ``u`` = ``f`` L2-normalised over channels, viewed as ``[N, HW, C]``::

        A = softmax_rows(u u^T)          # [N, HW, HW], the position-attention matrix
        r = gamma * (A u)^T + u^T        # gamma = RELATION_GAMMA

    ``A`` is never materialised in full:

    * ``'fused'`` - :func:`zsq_engine.ops.self_attention`: on CPU one C++ kernel that keeps a
      single score row per thread and recomputes the rows in the backward (float32; other
      dtypes and devices run its row-block reference);
    * ``'sdpa'`` - ``scaled_dot_product_attention(u, u, u, scale=1)``, which is exactly ``A u``
      (FlashAttention on CUDA);
    * ``'chunked'`` - ``chunk_rows`` query rows at a time in plain autograd (``[N, chunk, HW]``
      blocks; the backward keeps every block);
    * ``'auto'`` - ``'sdpa'`` on CUDA, ``'fused'`` elsewhere (``'chunked'`` for float64). (On CPU, fwd+bwd at
      [64, 16, 28, 28], one thread: fused is several times faster than chunked, and PyTorch's
      CPU SDPA is slower than chunked once gradients are needed.)
    """
    _check_feature("f", f)
    if impl not in SPATIAL_IMPLS:
        raise ValueError(f"impl must be one of {SPATIAL_IMPLS}, got {impl!r}")
    n, c, h, w = f.shape
    u = F.normalize(f.reshape(n, c, h * w), dim=1).transpose(1, 2)  # [N, HW, C]
    if impl == "auto":
        impl = "sdpa" if f.is_cuda else "fused" if f.dtype in _FUSED_DTYPES else "chunked"
    if impl == "fused":
        out = ops.self_attention(u)
    elif impl == "sdpa":
        out = F.scaled_dot_product_attention(u, u, u, scale=1.0)
    else:
        rows = _CHUNK_ROWS if chunk_rows is None else int(chunk_rows)
        if rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows!r}")
        # the op's row-block reference, differentiated by autograd ([N, rows, HW] blocks)
        out, _ = attention_reference.self_attention_forward(u, rows)
    return (RELATION_GAMMA * out + u).transpose(1, 2)


def channel_relation(f: torch.Tensor) -> torch.Tensor:
    """ZAQ's channel relation: ``[N, C, H, W] -> [N, C, H*W]``.

    ``u`` = ``f`` L2-normalised over channels, ``[N, C, HW]``; ``E = u u^T`` (``C x C``);
    ``A = softmax_rows(rowmax(E) - E)``; ``r = gamma * A u + u``.
    """
    _check_feature("f", f)
    n, c, h, w = f.shape
    u = F.normalize(f.reshape(n, c, h * w), dim=1)
    energy = u @ u.transpose(1, 2)
    attn = torch.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1)
    return RELATION_GAMMA * (attn @ u) + u


def relation_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor],
                  impl: str = "auto") -> torch.Tensor:
    """Sum over stages of ``L1(spatial_s, spatial_t) + L1(channel_s, channel_t)`` (means)."""
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(f"need one student feature per teacher feature (non-empty), got {len(student_feats)} "
                         f"and {len(teacher_feats)}")
    total = None
    for i, (fs, ft) in enumerate(zip(student_feats, teacher_feats)):
        if fs.shape != ft.shape:
            raise ValueError(f"stage {i}: student feature {tuple(fs.shape)} and teacher feature "
                             f"{tuple(ft.shape)} differ in shape")
        term = F.l1_loss(spatial_relation(fs, impl), spatial_relation(ft, impl)) + \
            F.l1_loss(channel_relation(fs), channel_relation(ft))
        total = term if total is None else total + term
    return total


def channel_attention(f: torch.Tensor) -> torch.Tensor:
    """HAST channel-attention vector: ``normalize(mean_HW(f^2))`` over channels, ``[N, C]``."""
    _check_feature("f", f)
    return F.normalize(f.pow(2).mean(dim=(2, 3)), dim=1)


def feature_alignment(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of ``MSE(channel_attention(s), channel_attention(t))``."""
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(f"need one student feature per teacher feature (non-empty), got {len(student_feats)} "
                         f"and {len(teacher_feats)}")
    total = None
    for fs, ft in zip(student_feats, teacher_feats):
        term = F.mse_loss(channel_attention(fs), channel_attention(ft))
        total = term if total is None else total + term
    return total
