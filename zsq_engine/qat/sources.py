"""Where the student's training batches come from: a generator (GDFQ, ZAQ) or a fixed pool of
hard synthetic samples (HAST). Both draw from the global RNG, whose state the checkpoint keeps,
so a resumed run draws exactly the batches an uninterrupted one would."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..utils import random_resized_crop_flip

__all__ = ["GeneratorSource", "PoolSource"]

# Milder than HAST synthesis' (0.4, 1): the crops here are training inputs, not a synthesis prior.
POOL_CROP_SCALE = (0.5, 1.0)


class GeneratorSource:
    """Batches ``G(z, y)``; ``y`` uniform over the classes for a conditional generator, else None.

    The generator stays in train mode (batch-statistics BN, as in GDFQ / ZAQ training).
    """

    def __init__(self, generator: nn.Module, num_classes: int, conditional: bool) -> None:
        self.generator = generator
        self.num_classes = num_classes
        self.conditional = conditional

    def draw(self, n: int, grad: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(images [n, C, H, W], labels [n] or None)``. ``grad=False`` samples under no_grad:
        a student step then cannot send any gradient into the generator."""
        device = next(self.generator.parameters()).device
        z = torch.randn(n, self.generator.latent_dim, device=device)
        y = torch.randint(0, self.num_classes, (n,), device=device) if self.conditional else None
        with torch.set_grad_enabled(grad):
            images = self.generator(z, y)
        return images, y


class PoolSource:
    """Random batches of a fixed image pool ``[P, C, H, W]`` (+ labels), optionally with a
    random-resized-crop + horizontal flip per sample."""

    def __init__(self, images: torch.Tensor, labels: Optional[torch.Tensor], augment: bool = True) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] < 2:
            raise ValueError(f"pool images must be a tensor [P >= 2, C, H, W], got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        if labels is not None and labels.shape != (images.shape[0],):
            raise ValueError(f"pool labels must have shape [{images.shape[0]}], got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.augment = augment

    def draw(self, n: int, grad: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        idx = torch.randint(0, self.images.shape[0], (n,))
        x = self.images[idx.to(self.images.device)]
        y = self.labels[idx.to(self.labels.device)] if self.labels is not None else None
        if self.augment:
            x = random_resized_crop_flip(x, POOL_CROP_SCALE)
        return x, y
