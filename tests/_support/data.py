"""Test data that needs no download: the Fashion-MNIST skip mark and small ImageNet-style folders.

The folders are solid-colour PNGs under ``root/<class>/<j>.png``, written by the tests.
"""
from pathlib import Path

import pytest

from zsq_engine.data import fashion_mnist as fm

HAVE_FMNIST = all((Path(fm.FMNIST_SYSTEM_DIR) / f"{p}-{k}-ubyte.gz").is_file()
                  for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed (dataset-fashion-mnist)")

# Standard ImageNet-1k indices known independently of the committed list (torchvision's
# class list: 0 tench, 1 goldfish, 2 great white shark, 999 toilet tissue).
TENCH, GOLDFISH, SHARK, TISSUE = "n01440764", "n01443537", "n01484850", "n15075141"


def write_folder(root, classes, per_class=2, size=(40, 36), colour=lambda c, j: (c * 40 % 256, j * 50, 90)):
    """root/<class>/<j>.png, solid colours; returns root."""
    from PIL import Image

    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True)
        for j in range(per_class):
            Image.new("RGB", size, colour(c, j)).save(d / f"{j}.png")
    return root
