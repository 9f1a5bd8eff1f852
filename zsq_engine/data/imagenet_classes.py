"""ImageNet-1k class indices from WordNet ids, so that a folder holding any subset of the
classes is labelled with the standard 0..999 indices a pretrained classifier predicts.

The standard index of a class is its position in the sorted list of the 1000 ILSVRC-2012
WordNet ids (the order torchvision, timm and the TensorFlow checkpoints share). The list is
committed as ``imagenet_wnids.txt`` beside this module.
"""
from __future__ import annotations

import functools
import importlib.resources
import re
from typing import Dict, List, Sequence, Tuple

__all__ = ["IMAGENET_NUM_CLASSES", "imagenet_wnids", "is_wnid", "folder_class_indices"]

IMAGENET_NUM_CLASSES = 1000
_WNID_RE = re.compile(r"^n\d{8}$")


def is_wnid(name: str) -> bool:
    """True for a WordNet-id shaped name such as ``n01440764``."""
    return bool(_WNID_RE.match(name))


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> Tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in standard class-index order (index = position)."""
    resource = importlib.resources.files(__package__).joinpath("imagenet_wnids.txt")
    if not resource.is_file():
        raise FileNotFoundError("the ImageNet class list zsq_engine/data/imagenet_wnids.txt is missing from this "
                                "installation (package data not installed?)")
    wnids = tuple(line.strip() for line in resource.read_text().splitlines() if line.strip())
    if len(wnids) != IMAGENET_NUM_CLASSES or list(wnids) != sorted(wnids) or len(set(wnids)) != len(wnids):
        raise RuntimeError("zsq_engine/data/imagenet_wnids.txt is damaged: expected 1000 sorted distinct WordNet ids")
    return wnids


def folder_class_indices(classes: Sequence[str], root: str = "folder") -> Tuple[Dict[str, int], str]:
    """Labels for an image folder's class directory names.

    Returns ``(class_to_idx, scheme)``: with ``scheme == 'imagenet'`` when every name is a
    WordNet id (each mapped to its ImageNet-1k index, so a subset of the classes keeps the
    standard labels), else ``scheme == 'sorted'`` (position in the sorted names, torchvision's
    convention).

    Raises:
        ValueError: some names are WordNet ids and others are not, or a WordNet id is not one
            of the 1000 ImageNet-1k classes (both name the offending directories).
    """
    names = list(classes)
    wnid_like = [c for c in names if is_wnid(c)]
    if not wnid_like:
        return {c: i for i, c in enumerate(sorted(names))}, "sorted"
    other = [c for c in names if not is_wnid(c)]
    if other:
        raise ValueError(f"{root}: class directories mix WordNet ids ({len(wnid_like)}, e.g. {wnid_like[0]}) with "
                         f"other names ({_some(other)}); an ImageNet folder must hold only WordNet-id directories")
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    unknown = [c for c in names if c not in index]
    if unknown:
        raise ValueError(f"{root}: {len(unknown)} class director{'y is' if len(unknown) == 1 else 'ies are'} not "
                         f"ImageNet-1k WordNet ids: {_some(unknown)}")
    return {c: index[c] for c in names}, "imagenet"


def _some(names: List[str], k: int = 5) -> str:
    shown = ", ".join(sorted(names)[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")
