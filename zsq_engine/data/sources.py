"""Evaluation and calibration batches for a model: Fashion-MNIST splits and image folders, as the
CLI, the benchmarks and the tests use them."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

__all__ = ["fmnist_batches", "fmnist_calibration", "imagefolder_batches"]


def fmnist_batches(split: str, batch_size: int, data_dir: Optional[str]):
    from .fashion_mnist import fashion_mnist_loader

    return fashion_mnist_loader(split, batch_size=batch_size, root=data_dir)


def fmnist_calibration(num_images: int, data_dir: Optional[str], seed: int, batch_size: int = 128
                       ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """A seeded random subset of the Fashion-MNIST TRAIN split, as a list of batches."""
    from .fashion_mnist import load_fashion_mnist, normalize_fashion_mnist

    images, labels = load_fashion_mnist("train", data_dir)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(images.shape[0], generator=g)[:num_images]
    x, y = normalize_fashion_mnist(images[idx]), labels[idx]
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]


def imagefolder_batches(root: str, model_name: str, batch_size: int, limit: Optional[int] = None, info=None):
    from .imagefolder import imagefolder_loader
    from zsq_engine.models import get_model_info

    info = info or get_model_info(model_name)
    loader = imagefolder_loader(root, batch_size=batch_size, mean=info.mean, std=info.std,
                                resize_size=info.resize_size, crop_size=info.input_shape[-1])
    if limit is None:
        return loader
    batches, seen = [], 0
    for x, y in loader:
        batches.append((x, y))
        seen += y.numel()
        if seen >= limit:
            break
    return batches
