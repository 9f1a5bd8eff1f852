"""Users' own models: ``package.module:factory`` specs and checked state-dict loading.

A spec names any importable callable that returns an ``nn.Module`` (``mypkg.nets:build``,
``torchvision.models:resnet18``). What the pipelines need to know about it comes, in order,
from explicit overrides (CLI flags ``--input-size`` / ``--num-classes``), from upper-case
attributes of the factory itself or else constants of its module (``INPUT_SHAPE = (3, 224,
224)``, ``NUM_CLASSES``, ``MEAN``, ``STD``, ``RESIZE_SIZE``), else from the model itself (class count = outputs of the last
``nn.Linear``) and the ImageNet defaults (3x224x224, ImageNet mean / std, resize 256).
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Mapping, Optional

import torch
from torch import nn

__all__ = ["WeightsMismatchError", "is_user_spec", "import_factory", "build_user_model", "user_model_facts", "state_dict_mismatch",
           "load_checked_state_dict"]


class WeightsMismatchError(ValueError, RuntimeError):
    """A state dict that does not fit the model (a RuntimeError too, as torch's own
    ``load_state_dict`` raises, so older callers that catch that keep working)."""


def is_user_spec(name) -> bool:
    """True for a ``module:factory`` spec (registered names never contain a colon)."""
    return isinstance(name, str) and ":" in name


def import_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable named by ``spec`` (``package.module:attr`` or ``package.module:Class.attr``).

    Raises ValueError for a malformed spec, an unimportable module, a missing attribute or one
    that is not callable (each message names the spec and what was expected).
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ValueError(f"--model {spec!r}: expected a registered name or package.module:factory")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--model {spec!r}: cannot import module {module_name!r} ({exc}); is it on PYTHONPATH?") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--model {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"--model {spec!r}: {attr!r} is a {type(obj).__name__}, expected a callable returning "
                         "an nn.Module")
    return obj


def build_user_model(spec: str, **kw) -> nn.Module:
    """Call the factory named by ``spec``; ValueError unless it returns an ``nn.Module``."""
    model = import_factory(spec)(**kw)
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {spec!r}: the factory returned a {type(model).__name__}, expected an nn.Module")
    return model


def _last_linear_outputs(model: nn.Module) -> Optional[int]:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m.out_features
    return last


def user_model_facts(spec: str, model: Optional[nn.Module] = None, input_size: Optional[int] = None,
                     num_classes: Optional[int] = None) -> dict:
    """``input_shape, num_classes, mean, std, resize_size`` of a user model (see the module docstring).

    ``model``: an already built instance (saves building one to count its classes).
    Raises ValueError when the class count can be found nowhere.
    """
    module = importlib.import_module(spec.partition(":")[0])
    factory = import_factory(spec)

    def declared(key, default=None):
        return getattr(factory, key, getattr(module, key, default))

    shape = tuple(declared("INPUT_SHAPE", (3, 224, 224)))
    if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
        raise ValueError(f"--model {spec!r}: INPUT_SHAPE must be (C, H, W) positive ints, got {shape!r}")
    if input_size is not None:
        shape = (shape[0], int(input_size), int(input_size))
    classes = num_classes if num_classes is not None else declared("NUM_CLASSES")
    if classes is None:
        classes = _last_linear_outputs(model if model is not None else build_user_model(spec))
    if classes is None:
        raise ValueError(f"--model {spec!r}: cannot tell its class count (no nn.Linear classifier); pass "
                         "--num-classes or define NUM_CLASSES in its module")
    from ..data.imagefolder import IMAGENET_MEAN, IMAGENET_STD

    mean = tuple(declared("MEAN", IMAGENET_MEAN))
    std = tuple(declared("STD", IMAGENET_STD))
    if len(mean) != shape[0] or len(std) != shape[0]:
        raise ValueError(f"--model {spec!r}: MEAN / STD need {shape[0]} values (one per input channel)")
    # 224 / 256 is the classic crop ratio; keep it for other sizes when the module says nothing
    resize = declared("RESIZE_SIZE")
    if resize is None or input_size is not None:
        resize = int(round(shape[-1] / 0.875))
    return {"input_shape": shape, "num_classes": int(classes), "mean": mean, "std": std, "resize_size": int(resize)}


def state_dict_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Dict[str, List[str]]:
    """Key-by-key comparison: ``missing`` (in the model, not the file), ``unexpected`` (in the
    file only) and ``shape`` (``'key: file (a, b) vs model (c, d)'``)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return {"missing": missing, "unexpected": unexpected, "shape": shape}


def _listing(title: str, items: List[str], k: int = 10) -> str:
    more = f"\n    ... and {len(items) - k} more" if len(items) > k else ""
    return f"  {len(items)} {title}:\n" + "\n".join(f"    {x}" for x in items[:k]) + more


def load_checked_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                            model_name: str) -> nn.Module:
    """``model.load_state_dict(state)`` after a key-by-key check; on any mismatch a ValueError
    lists the missing, unexpected and shape-mismatched keys (10 of each at most)."""
    report = state_dict_mismatch(model, state)
    if any(report.values()):
        parts = [_listing(t, report[k]) for k, t in (("missing", "keys missing from the file"),
                                                     ("unexpected", "unexpected keys in the file"),
                                                     ("shape", "keys with another shape")) if report[k]]
        raise WeightsMismatchError(f"weights {source} do not match {model_name}:\n" + "\n".join(parts))
    model.load_state_dict(dict(state), strict=True)
    return model
