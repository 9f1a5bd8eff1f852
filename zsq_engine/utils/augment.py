"""Batched, differentiable image augmentations shared by synthesis (HAST) and QAT (image pools)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["random_resized_crop_flip"]


def random_resized_crop_flip(x: torch.Tensor, scale: Sequence[float] = (0.4, 1.0),
                             ratio: Sequence[float] = (3 / 4, 4 / 3),
                             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Batched random-resized-crop + horizontal flip of ``x`` [N, C, H, W], differentiable in x.

    One affine_grid + one grid_sample for the whole batch: every sample gets its own crop area
    (fraction ``scale`` of the image, aspect ratio log-uniform in ``ratio``), position and flip
    (p = 0.5), all drawn on the CPU from ``generator`` (reproducible across devices).
    """
    n = x.shape[0]
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(n).uniform_(float(torch.tensor(ratio[0]).log()), float(torch.tensor(ratio[1]).log()),
                                    generator=generator)
    aspect = log_r.exp()
    # crop width / height as fractions of the image side, clamped into the image
    fw = (area * aspect).sqrt().clamp(max=1.0)
    fh = (area / aspect).sqrt().clamp(max=1.0)
    # centre in normalised coordinates [-1, 1] such that the crop stays inside the image
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - fw)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - fh)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = fw * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = fh
    theta[:, 1, 2] = cy
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
