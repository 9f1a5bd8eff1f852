"""Self-attention with queries = keys = values = ``u`` and scale 1 (ZAQ's spatial relation), in
row blocks: the reference primitives of :func:`zsq_engine.ops.self_attention`.

``u``: ``[B, L, C]``. Forward: ``out = softmax(u u^T) u`` and ``lse = logsumexp(u u^T)`` per
row. Backward (u is query, key and value at once), with ``P`` the softmax and ``g`` the output
gradient::

    dS = P * (g u^T - rowsum(g * out))        # softmax backward
    du = dS u + dS^T u + P^T g                # query + key + value gradients

At most ``rows`` x L scores per image exist at a time.
"""
from __future__ import annotations

from typing import Tuple

import torch

ROWS = 256


def self_attention_forward(u: torch.Tensor, rows: int = ROWS) -> Tuple[torch.Tensor, torch.Tensor]:
    kt = u.transpose(1, 2)
    outs, lses = [], []
    for start in range(0, u.shape[1], rows):
        s = u[:, start:start + rows] @ kt                 # [B, r, L]
        lse = torch.logsumexp(s, dim=-1)
        outs.append(torch.exp(s - lse.unsqueeze(-1)) @ u)
        lses.append(lse)
    if not outs:
        return torch.empty_like(u), u.new_empty(u.shape[:2])
    return torch.cat(outs, dim=1), torch.cat(lses, dim=1)


def self_attention_backward(u: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, grad_out: torch.Tensor,
                            rows: int = ROWS) -> torch.Tensor:
    kt = u.transpose(1, 2)
    d = (grad_out * out).sum(dim=-1)                      # [B, L]
    grad = torch.zeros_like(u)
    for start in range(0, u.shape[1], rows):
        sl = slice(start, start + rows)
        q, g = u[:, sl], grad_out[:, sl]
        p = torch.exp(q @ kt - lse[:, sl].unsqueeze(-1))
        ds = p * (g @ kt - d[:, sl].unsqueeze(-1))
        grad[:, sl] += ds @ u                             # as query
        grad += ds.transpose(1, 2) @ q + p.transpose(1, 2) @ g  # as key and as value
    return grad
