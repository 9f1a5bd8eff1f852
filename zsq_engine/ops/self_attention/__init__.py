"""The self-attention op family: ``self_attention(u) = softmax(u u^T) u`` per batch entry, without
storing the L x L matrix (ZAQ's spatial relation). The forward keeps only the output and one
log-sum-exp per row; the backward recomputes the probabilities a row (C++) or a row block
(reference) at a time. Why and how much memory that saves: docs/architecture.md.

Backends: ``cpu`` = the C++ kernel (float32; other dtypes go to the reference), ``reference``
= row blocks in PyTorch (any device and dtype). On CUDA, callers that want a fused kernel use
``torch.nn.functional.scaled_dot_product_attention`` (see
:func:`zsq_engine.qat.losses.spatial_relation`).
"""
from __future__ import annotations

import torch

from ...opspec import checks
from ..dispatch import add_backend_modules
from . import library

add_backend_modules(f"{__name__}.cpu")

__all__ = ["self_attention"]


def self_attention(u: torch.Tensor) -> torch.Tensor:
    """``softmax(u[b] @ u[b].T, dim=-1) @ u[b]`` for every ``b`` of ``u`` ``[B, L, C]`` (float),
    differentiable with respect to ``u`` (as query, key and value at once). Scale 1, no mask."""
    checks.check_float_tensor("u", u)
    if u.dim() != 3:
        raise ValueError(f"u must be [batch, L, C], got shape {tuple(u.shape)}")
    out, _lse = library.self_attention(u)
    return out
