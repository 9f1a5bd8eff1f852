"""Datasets: Fashion-MNIST (idx files) and ImageNet-style image folders, torchvision-free."""

from .fashion_mnist import (
    FMNIST_CLASSES,
    FMNIST_ENV_VAR,
    FMNIST_MEAN,
    FMNIST_STD,
    FMNIST_SYSTEM_DIR,
    FashionMNIST,
    IdxFormatError,
    fashion_mnist_loader,
    find_fashion_mnist_dir,
    load_fashion_mnist,
    normalize_fashion_mnist,
    read_idx,
)
from .imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMG_EXTENSIONS,
    ImageFolder,
    imagefolder_loader,
)

__all__ = [
    "FMNIST_CLASSES",
    "FMNIST_ENV_VAR",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "FMNIST_SYSTEM_DIR",
    "FashionMNIST",
    "IdxFormatError",
    "fashion_mnist_loader",
    "find_fashion_mnist_dir",
    "load_fashion_mnist",
    "normalize_fashion_mnist",
    "read_idx",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "ImageFolder",
    "imagefolder_loader",
]
