"""Which model and which evaluation images a command uses (shared by eval, quantize, qat,
convert, bench): ``--model`` as a registered name or ``package.module:factory``, ``--weights``,
``--input-size`` / ``--num-classes`` overrides, and ``--val-dir`` (an ImageFolder preprocessed
as the model's registry entry says; WordNet-id folders scored with ImageNet-1k indices).
"""
from __future__ import annotations

import argparse
from typing import Iterable, List, Optional, Tuple

import torch
from torch import nn

from . import common


def add_model_args(p: argparse.ArgumentParser, weights: bool = True, input_size: bool = True) -> None:
    """``--weights`` (optional), ``--input-size`` (optional), ``--num-classes``."""
    if weights:
        p.add_argument("--weights", default=None,
                       help="float state-dict file for --model (checked key by key; default: the model's own "
                            "weights)")
    if input_size:
        add_input_size_arg(p)
    p.add_argument("--num-classes", type=common.positive_int, default=None,
                   help="classifier outputs of a package.module:factory model (default: its module's NUM_CLASSES, "
                        "else the last nn.Linear's outputs)")


def add_input_size_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-size", type=common.positive_int, default=None,
                   help="input height = width (default: the model's; for package.module:factory models its "
                        "module's INPUT_SHAPE, else 224)")


def add_val_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-dir", default=None,
                   help="ImageFolder of validation images (root/<class>/<image>; WordNet-id class folders are "
                        "scored with the ImageNet-1k indices); top-1 and top-5 are reported")


def model_info(args, name: Optional[str] = None, model: Optional[nn.Module] = None):
    from zsq_engine.models import get_model_info

    return get_model_info(name or args.model, input_size=getattr(args, "input_size", None),
                          num_classes=getattr(args, "num_classes", None), model=model)


def load_model(args, name: Optional[str] = None, pretrained: bool = True) -> Tuple[nn.Module, object]:
    """``(float model in eval mode, ModelInfo)`` from ``--model`` / ``--weights``."""
    from zsq_engine.models import get_model

    name = name or args.model
    weights = getattr(args, "weights", None)
    model = get_model(name, pretrained=pretrained or weights is not None, weights_path=weights)
    return model, model_info(args, name, model)


def folder_dataset(root: str, info):
    """The :class:`ImageFolder` at ``root`` with ``info``'s preprocessing, checked against its classes."""
    from zsq_engine.data import ImageFolder

    resize = info.resize_size if info.resize_size is not None else info.input_shape[-1]
    ds = ImageFolder(root, resize_size=resize, crop_size=info.input_shape[-1], mean=info.mean, std=info.std)
    if info.input_shape[0] != 3:
        raise ValueError(f"{info.name} takes {info.input_shape[0]}-channel inputs; an ImageFolder gives RGB images")
    ds.check_num_classes(info.num_classes, info.name)
    return ds


def val_batches(args, info, limit: Optional[int] = None, batch_size: Optional[int] = None):
    """``(batches, description)`` of the evaluation data, or ``(None, reason)`` when there is none:
    ``--val-dir`` when given, else the Fashion-MNIST test split for fmnist_resnet."""
    batch_size = batch_size or getattr(args, "batch_size", None) or 64
    if getattr(args, "val_dir", None):
        from torch.utils.data import DataLoader, Subset

        ds = folder_dataset(args.val_dir, info)
        if limit is not None:
            ds = Subset(ds, range(min(limit, len(ds))))
        return DataLoader(ds, batch_size=min(batch_size, 64)), f"{args.val_dir} ({len(ds)} images)"
    if info.name == "fmnist_resnet":
        from ..data.sources import fmnist_batches

        test = fmnist_batches("test", batch_size, getattr(args, "data_dir", None))
        if limit is not None:
            test = _first(test, limit)
        return test, "Fashion-MNIST test split"
    return None, f"no evaluation data for {info.name}: pass --val-dir (an ImageFolder of validation images)"


def folder_images(root: str, info, num: int, seed: int) -> torch.Tensor:
    """``num`` images ``[N, C, H, W]`` of the ImageFolder at ``root`` (a seeded random subset)."""
    ds = folder_dataset(root, info)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:num].tolist()
    return torch.stack([ds[i][0] for i in idx])


def _first(batches: Iterable, limit: int) -> List:
    out, seen = [], 0
    for x, y in batches:
        if seen >= limit:
            break
        take = min(limit - seen, y.shape[0])
        out.append((x[:take], y[:take]))
        seen += take
    return out


def accuracy(model: nn.Module, batches, device, desc: str = "eval", show_progress: bool = True) -> dict:
    """``{"top1": %, "top5": %}`` of ``model`` on ``batches``."""
    from zsq_engine.evaluation import evaluate_topk

    acc = evaluate_topk(model, batches, device, ks=(1, 5), desc=desc, show_progress=show_progress)
    return {"top1": acc[1], "top5": acc[5]}


def format_accuracy(acc: dict) -> str:
    return f"top-1 {acc['top1']:.2f} %, top-5 {acc['top5']:.2f} %"
