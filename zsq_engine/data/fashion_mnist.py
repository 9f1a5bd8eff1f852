"""Fashion-MNIST from the four idx files, without torchvision.

Where the files are looked for, in order:

1. the ``root`` argument (``--data-dir`` on the command line);
2. the ``ZSQ_FMNIST_DIR`` environment variable;
3. ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package ``dataset-fashion-mnist``).

Each place may hold the files gzipped (``train-images-idx3-ubyte.gz``) or plain
(``train-images-idx3-ubyte``). Decoded arrays are cached per process, so repeated calls cost
nothing. Zero-shot methods never read the train split; only the training script and the
accuracy evaluation (test split) do.
"""

from __future__ import annotations

import gzip
import os
import struct
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "FMNIST_MEAN",
    "FMNIST_STD",
    "FMNIST_CLASSES",
    "FMNIST_ENV_VAR",
    "FMNIST_SYSTEM_DIR",
    "IdxFormatError",
    "read_idx",
    "find_fashion_mnist_dir",
    "load_fashion_mnist",
    "FashionMNIST",
    "fashion_mnist_loader",
    "normalize_fashion_mnist",
]

# Per-pixel mean / std of the TRAIN split after scaling to [0, 1] (computed over all
# 60000 x 28 x 28 pixels: 0.28604, 0.35302). Normalised input = (x / 255 - mean) / std.
FMNIST_MEAN: Tuple[float] = (0.2860,)
FMNIST_STD: Tuple[float] = (0.3530,)

FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

FMNIST_ENV_VAR = "ZSQ_FMNIST_DIR"
FMNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES = "{}-images-idx3-ubyte"
_LABELS = "{}-labels-idx1-ubyte"

# Magic number of an idx file: two zero bytes, a type code, the number of dimensions.
_IDX_UBYTE = 0x08

_cache: Dict[Tuple[str, str], Tuple[torch.Tensor, torch.Tensor]] = {}
_cache_lock = threading.Lock()


class IdxFormatError(ValueError):
    """An idx file is truncated, has a wrong magic number or unexpected dimensions."""


PathLike = Union[str, "os.PathLike[str]"]


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise IdxFormatError(f"cannot read idx file {path}: {exc}") from exc


def read_idx(path: PathLike, expected_ndim: int) -> np.ndarray:
    """Decode an unsigned-byte idx file (optionally gzipped) into a uint8 array.

    Args:
        path: file to read.
        expected_ndim: 3 for an image file ``[N, rows, cols]``, 1 for a label file ``[N]``.

    Raises:
        IdxFormatError: truncated/corrupt gzip, wrong magic number, wrong number of dimensions
            or a payload whose length does not match the header.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxFormatError(f"{path}: only {len(data)} bytes, too short for an idx header")
    zero0, zero1, dtype_code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or dtype_code != _IDX_UBYTE:
        raise IdxFormatError(
            f"{path}: bad idx magic number 0x{data[:4].hex()} "
            f"(expected 0x0000080{expected_ndim}: unsigned bytes, {expected_ndim} dims)"
        )
    if ndim != expected_ndim:
        raise IdxFormatError(f"{path}: idx file has {ndim} dimensions, expected {expected_ndim}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxFormatError(f"{path}: truncated idx header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    expected_len = header_len + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected_len:
        raise IdxFormatError(
            f"{path}: header says shape {tuple(dims)} ({expected_len} bytes in all) "
            f"but the file holds {len(data)} bytes; the file is corrupt or truncated"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def _locate(directory: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _has_split(directory: Path, split: str) -> bool:
    prefix = _SPLIT_PREFIX[split]
    return _locate(directory, _IMAGES.format(prefix)) is not None and _locate(
        directory, _LABELS.format(prefix)
    ) is not None


def _missing_message(split: str, tried: list) -> str:
    prefix = _SPLIT_PREFIX[split]
    places = "\n".join(f"  - {p}" for p in tried)
    return (
        f"Fashion-MNIST {split} split not found "
        f"(need {_IMAGES.format(prefix)}[.gz] and {_LABELS.format(prefix)}[.gz]). Looked in:\n"
        f"{places}\n"
        "To get the data, either\n"
        "  * on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
        f"(installs the files in {FMNIST_SYSTEM_DIR}), or\n"
        "  * download the four files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,\n"
        "    t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz from the Fashion-MNIST\n"
        "    project (github.com/zalandoresearch/fashion-mnist) into one directory and pass\n"
        f"    --data-dir DIR (root=DIR in Python) or set {FMNIST_ENV_VAR}=DIR."
    )


def _check_split(split: str) -> None:
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def find_fashion_mnist_dir(split: str = "train", root: Optional[PathLike] = None) -> Path:
    """Directory holding the ``split`` files, by the resolution order in the module docstring.

    An explicit ``root`` (or env var) that lacks the files is an error, not a silent fallback,
    so a typo in ``--data-dir`` is never masked by the system copy.

    Raises:
        FileNotFoundError: with instructions for getting the files.
    """
    _check_split(split)
    if root is not None:
        candidates = [("root argument", Path(root))]
    elif os.environ.get(FMNIST_ENV_VAR):
        candidates = [(f"${FMNIST_ENV_VAR}", Path(os.environ[FMNIST_ENV_VAR]))]
    else:
        candidates = [("system package dir", Path(FMNIST_SYSTEM_DIR))]
    for _, directory in candidates:
        if directory.is_dir() and _has_split(directory, split):
            return directory
    tried = [f"{what}: {directory}" for what, directory in candidates]
    raise FileNotFoundError(_missing_message(split, tried))


def load_fashion_mnist(split: str = "train", root: Optional[PathLike] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Load one split.

    Returns:
        ``(images, labels)``: images ``uint8 [N, 28, 28]`` (0..255), labels ``int64 [N]``
        (0..9, see ``FMNIST_CLASSES``); N = 60000 for ``'train'``, 10000 for ``'test'`` with
        the official files.
        The tensors are shared with the in-process cache: do not modify them in place.

    Raises:
        ValueError: unknown split.
        FileNotFoundError: files not found (message says how to get them).
        IdxFormatError: a file is corrupt or does not match Fashion-MNIST's shapes.
    """
    directory = find_fashion_mnist_dir(split, root)
    key = (str(directory.resolve()), split)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        prefix = _SPLIT_PREFIX[split]
        images_path = _locate(directory, _IMAGES.format(prefix))
        labels_path = _locate(directory, _LABELS.format(prefix))
        images = read_idx(images_path, expected_ndim=3)
        labels = read_idx(labels_path, expected_ndim=1)
        # The official files hold 60000 / 10000 images; a consistent subset (same N in both
        # files, 28x28 images) is accepted so that smaller copies work too.
        if images.shape[0] == 0 or images.shape[1:] != (28, 28):
            raise IdxFormatError(f"{images_path}: shape {images.shape}, expected (N, 28, 28) with N > 0")
        if labels.shape != (images.shape[0],):
            raise IdxFormatError(
                f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path}"
            )
        if labels.max() > 9:
            raise IdxFormatError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
        result = (torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
        _cache[key] = result
        return result


def normalize_fashion_mnist(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 28, 28]`` (or ``[N, 1, 28, 28]``) -> float32 ``[N, 1, 28, 28]``,
    ``(x / 255 - FMNIST_MEAN) / FMNIST_STD``."""
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be [N, 28, 28] or [N, 1, 28, 28], got {tuple(images.shape)}")
    x = images.to(torch.float32).div_(255.0)
    return x.sub_(FMNIST_MEAN[0]).div_(FMNIST_STD[0])


class FashionMNIST(Dataset):
    """Map-style dataset over a cached split: item ``i`` -> ``(float32 [1, 28, 28], int64 label)``.

    With ``normalize=False`` the image is scaled to [0, 1] only.
    """

    def __init__(self, split: str = "test", root: Optional[PathLike] = None, normalize: bool = True) -> None:
        self.images, self.labels = load_fashion_mnist(split, root)
        self.normalize = normalize

    def __len__(self) -> int:
        return self.labels.shape[0]

    def _convert(self, images: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            return normalize_fashion_mnist(images)
        return images.unsqueeze(1).to(torch.float32).div_(255.0)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._convert(self.images[index : index + 1])[0], self.labels[index]

    def __getitems__(self, indices):
        # Batched fetch used by DataLoader: one vectorised conversion instead of one per sample.
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self._convert(self.images[idx])
        return list(zip(x.unbind(0), self.labels[idx].unbind(0)))


def fashion_mnist_loader(
    split: str = "test",
    batch_size: int = 256,
    root: Optional[PathLike] = None,
    normalize: bool = True,
    shuffle: bool = False,
    generator: Optional[torch.Generator] = None,
) -> DataLoader:
    """DataLoader yielding ``(x float32 [B, 1, 28, 28], y int64 [B])``.

    ``normalize=True`` applies ``(x / 255 - 0.2860) / 0.3530`` (``FMNIST_MEAN`` / ``FMNIST_STD``,
    the same values as ``get_model_info('fmnist_resnet')``); ``False`` gives [0, 1] floats.
    No augmentation; single process (the data is in memory already).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = FashionMNIST(split, root, normalize)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)
