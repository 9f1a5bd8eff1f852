"""Reference QDrop mix (the oracle of ``qdrop_mix``'s kernels): per element, the quantized value
with probability ``p``, else the float one."""
from __future__ import annotations

import torch

from ..fake_quant.reference import keep_mask


def qdrop_mix(x_q: torch.Tensor, x_fp: torch.Tensor, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    return torch.where(keep_mask(x_q, p, seed, offset), x_q, x_fp)
