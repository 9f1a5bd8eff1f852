"""Reference QDrop mixing: per element, the quantized value with probability ``p`` else the float one."""
from __future__ import annotations

import torch

from .rng import uniform


def qdrop_mix(x_q: torch.Tensor, x_fp: torch.Tensor, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    u = uniform(seed, x_q.numel(), offset, device=x_q.device).reshape(x_q.shape)
    return torch.where(u < p, x_q, x_fp)
