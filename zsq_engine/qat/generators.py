"""Generators of the QAT methods. GDFQ's conditional generator lives in
:mod:`zsq_engine.synth.gdfq`; ZAQ's unconditional one, on the same trunk, is here."""
from __future__ import annotations

from typing import Sequence

import torch

from ..synth.gdfq import GDFQGenerator, UpsamplingGenerator

__all__ = ["ZAQGenerator", "GDFQGenerator"]


class ZAQGenerator(UpsamplingGenerator):
    """z ``[N, latent_dim]`` -> images ``[N, C, H, W]`` in the model's normalised input space.

    ZAQ's DCGAN-style generator: the :class:`~zsq_engine.synth.gdfq.UpsamplingGenerator` trunk
    on z directly, hidden BN with the default eps (no label embedding, no eps quirk).
    ``forward(z, labels=None)``: labels are accepted and ignored so the training loop can call
    every generator the same way.
    """

    conditional = False

    def __init__(self, input_shape: Sequence[int], latent_dim: int = 256) -> None:
        super().__init__(input_shape, latent_dim, hidden_eps=1e-5)

    def forward(self, z: torch.Tensor, labels=None) -> torch.Tensor:
        return self.decode(z)
