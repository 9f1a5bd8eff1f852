"""ImageNet-style evaluation folders (``root/<class>/<image>``) without torchvision.

Labels: when every class directory is a WordNet id (n01440764, ...), its standard ImageNet-1k
index (:mod:`.imagenet_classes`), so a folder holding only some of the classes is still scored
with the labels the pretrained model predicts; otherwise the position in the sorted directory
names (torchvision's ``ImageFolder`` convention).

Evaluation transform (torchvision's classic one): resize the shorter side to ``resize_size``
(bilinear), center-crop ``crop_size``, scale to [0, 1], normalise with ``mean`` / ``std``.
Pillow is imported lazily so the rest of the package works without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .imagenet_classes import folder_class_indices

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMG_EXTENSIONS", "ImageFolder", "imagefolder_loader", "eval_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png")

PathLike = Union[str, "os.PathLike[str]"]


def _pil_image():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("ImageFolder needs Pillow: pip install pillow") from exc
    return Image


def eval_transform(
    resize_size: int = 256,
    crop_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    """PIL image -> float32 ``[3, crop_size, crop_size]`` tensor (resize, center crop, normalise)."""
    if crop_size > resize_size:
        raise ValueError(f"crop_size ({crop_size}) must not exceed resize_size ({resize_size})")
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def transform(img) -> torch.Tensor:
        Image = _pil_image()
        img = img.convert("RGB")
        w, h = img.size
        # Shorter side -> resize_size, the longer one keeps the aspect ratio (truncated).
        if w <= h:
            new_w, new_h = resize_size, int(resize_size * h / w)
        else:
            new_w, new_h = int(resize_size * w / h), resize_size
        img = img.resize((new_w, new_h), Image.BILINEAR)
        left = int(round((new_w - crop_size) / 2.0))
        top = int(round((new_h - crop_size) / 2.0))
        img = img.crop((left, top, left + crop_size, top + crop_size))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return (x.to(torch.float32) / 255.0 - mean_t) / std_t

    return transform


class ImageFolder(Dataset):
    """``root/<class_name>/**/<file>.{jpg,jpeg,png}`` -> ``(float32 [3, crop, crop], int64 label)``.

    Attributes:
        classes: sorted class directory names.
        class_to_idx: name -> label (ImageNet-1k index for WordNet-id folders, else position).
        label_scheme: ``'imagenet'`` (WordNet ids) or ``'sorted'``.
        num_labels: the classifier width the labels assume (1000 for ``'imagenet'``, else the
            number of class directories).
        samples: list of ``(path, label)``, sorted by class then path.

    Raises:
        FileNotFoundError: ``root`` missing or not a directory.
        RuntimeError: no class sub-directories, or no image files in any of them.
        ValueError: WordNet-id directories mixed with other names, or unknown WordNet ids.
    """

    def __init__(
        self,
        root: PathLike,
        transform: Optional[Callable] = None,
        resize_size: int = 256,
        crop_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"image folder {self.root} does not exist or is not a directory "
                "(expected the ImageFolder layout root/<class>/<image>.jpg, e.g. an ImageNet val dir)"
            )
        self.classes: List[str] = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if not self.classes:
            raise RuntimeError(f"image folder {self.root} has no class sub-directories (expected root/<class>/<image>.jpg)")
        self.class_to_idx: Dict[str, int]
        self.class_to_idx, self.label_scheme = folder_class_indices(self.classes, str(self.root))
        self.num_labels = 1000 if self.label_scheme == "imagenet" else len(self.classes)
        self.samples: List[Tuple[str, int]] = []
        for cls in self.classes:
            found = []
            for dirpath, _dirs, files in os.walk(self.root / cls, followlinks=True):
                for name in files:
                    if name.lower().endswith(IMG_EXTENSIONS):
                        found.append(os.path.join(dirpath, name))
            self.samples.extend((p, self.class_to_idx[cls]) for p in sorted(found))
        if not self.samples:
            raise RuntimeError(
                f"image folder {self.root} has {len(self.classes)} class directories but no image files "
                f"with extensions {IMG_EXTENSIONS}"
            )
        self.transform = transform or eval_transform(resize_size, crop_size, mean, std)

    def check_num_classes(self, num_classes: int, model_name: str = "the model") -> None:
        """Raise ValueError when a classifier with ``num_classes`` outputs cannot be scored on
        these labels (ImageNet folders need 1000 outputs; other folders one per directory)."""
        if num_classes == self.num_labels:
            return
        if self.label_scheme == "imagenet":
            raise ValueError(f"{model_name} has {num_classes} outputs, but {self.root} is an ImageNet folder "
                             f"(WordNet-id directories) whose labels are ImageNet-1k indices 0..999")
        raise ValueError(f"{model_name} has {num_classes} outputs, but {self.root} has {self.num_labels} class "
                         f"directories (labelled by sorted position); they must match")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        Image = _pil_image()
        with Image.open(path) as img:
            x = self.transform(img)
        return x, label


def imagefolder_loader(
    root: PathLike,
    batch_size: int = 64,
    num_workers: int = 0,
    shuffle: bool = False,
    **dataset_kwargs,
) -> DataLoader:
    """DataLoader over :class:`ImageFolder` yielding ``(float32 [B, 3, crop, crop], int64 [B])``.

    ``dataset_kwargs`` go to :class:`ImageFolder` (``resize_size``, ``crop_size``, ``mean``,
    ``std``, ``transform``), e.g. the mean/std from ``get_model_info(name)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = ImageFolder(root, **dataset_kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)
