"""Generators of the QAT methods. GDFQ's conditional generator lives in
:mod:`zsq_engine.synth.gdfq`; ZAQ's unconditional one is here."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..synth.gdfq import GDFQGenerator

__all__ = ["ZAQGenerator", "GDFQGenerator"]


class ZAQGenerator(nn.Module):
    """z ``[N, latent_dim]`` -> images ``[N, C, H, W]`` in the model's normalised input space.

    Linear -> 128 x ceil(H/4) x ceil(W/4) -> BN -> up x2 -> conv3x3 128->128 -> BN ->
    LeakyReLU(0.2) -> up x2 -> conv3x3 128->64 -> BN -> LeakyReLU(0.2) -> conv3x3 64->C -> tanh
    -> BN(C, affine=False) (ZAQ's DCGAN-style generator; the final BN matches the teacher's
    input statistics per channel). ``forward(z, labels=None)``: labels are accepted and ignored
    so the training loop can call every generator the same way.
    """

    conditional = False

    def __init__(self, input_shape: Sequence[int], latent_dim: int = 256) -> None:
        super().__init__()
        c, h, w = input_shape
        self.latent_dim = latent_dim
        self.out_hw = (h, w)
        self.init_hw = (math.ceil(h / 4), math.ceil(w / 4))
        self.fc = nn.Linear(latent_dim, 128 * self.init_hw[0] * self.init_hw[1])
        self.bn0 = nn.BatchNorm2d(128)
        self.conv1 = nn.Conv2d(128, 128, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(128)
        self.conv2 = nn.Conv2d(128, 64, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, c, 3, padding=1)
        self.bn_out = nn.BatchNorm2d(c, affine=False)

    def forward(self, z: torch.Tensor, labels=None) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], 128, *self.init_hw)
        x = F.interpolate(self.bn0(x), scale_factor=2, mode="nearest")
        x = F.leaky_relu(self.bn1(self.conv1(x)), 0.2)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.leaky_relu(self.bn2(self.conv2(x)), 0.2)
        x = torch.tanh(self.conv3(x))
        if tuple(x.shape[-2:]) != self.out_hw:
            x = F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=False)
        return self.bn_out(x)
