"""Integer-model files: ``save(model, path)`` / ``load(path)``.

Format (``torch.save`` of plain containers, read back with ``torch.load(weights_only=True)``)::

    {"format": "zsq-int-model", "version": FORMAT_VERSION,
     "architecture": {"layers": [{key, type, config}], "program": [...], "input_slot", "output_slot"},
     "state_dict": {name: CPU tensor},   # int8 / packed-int4 weights, scales, zero points, biases
     "meta": {"layout": ..., "bit_widths": ..., plus what the caller adds (model name, bits, ...)}}

The architecture holds every layer's geometry, bit-widths and activation grids and the program
that wires them, so loading needs no float model. A file whose ``version`` differs from
:data:`FORMAT_VERSION` is refused (:class:`IncompatibleFormatError`) rather than guessed at, and
a file of the current version is validated before anything is built from it
(:mod:`.file_checks`: geometry against the stored tensors, finite positive activation scales,
ordered ranges), so a damaged or crafted file is an error, not a model that runs wrong.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

from ..utils import FileFormatError, load_torch_file, save_torch_atomic
from .file_checks import check_payload
from .model import IntModel

__all__ = ["FORMAT_VERSION", "FORMAT_NAME", "IncompatibleFormatError", "save", "load", "load_with_meta"]

FORMAT_NAME = "zsq-int-model"
FORMAT_VERSION = 1

LAYOUT = {"activations": "NHWC int8/uint8 codes (per-tensor scale, zero point)",
          "conv_weight": "OHWI int8, or packed int4 [O, ceil(kh*kw*C/groups / 2)] low nibble first",
          "linear_weight": "[N, K] int8, or packed int4 [N, ceil(K/2)] low nibble first",
          "weight_scale": "fp32 per output channel", "zero_points": "int32, in stored-code units"}


class IncompatibleFormatError(FileFormatError):
    """The file was written by an incompatible version of the integer-model format."""


_HINT = "pass a file written by `zsq convert --out FILE`"


def save(model: IntModel, path, meta: Optional[dict] = None) -> None:
    """Write ``model`` to ``path`` atomically (temporary file in the same folder, then rename).

    ``meta``: extra JSON-like facts to keep (model name, bits, accuracy, ...)."""
    if not isinstance(model, IntModel):
        raise TypeError(f"model must be a zsq_engine.runtime.IntModel, got {type(model).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "architecture": model.architecture(),
               "state_dict": state,
               "meta": {"layout": dict(LAYOUT), "bit_widths": model.bit_widths(), **dict(meta or {})}}
    save_torch_atomic(payload, path)


def load_with_meta(path, device="cpu") -> Tuple[IntModel, dict]:
    """``(model, meta)`` from a file written by :func:`save`; the model is on ``device``, in eval mode.

    Raises FileNotFoundError, or :class:`zsq_engine.utils.FileFormatError` (a ValueError) for a
    file that is unreadable, of another kind or version, or whose content fails the checks of
    :mod:`.file_checks`."""
    path = Path(path)
    obj = load_torch_file(path, "zsq integer model file", _HINT)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        if isinstance(obj, dict) and "state_dict" in obj and "meta" in obj:
            raise FileFormatError(path, "is a fake-quant model (from `zsq quantize` / `zsq qat`), not an integer "
                                        "model", "convert it first: `zsq convert --checkpoint FILE --out INT.pt`")
        raise FileFormatError(path, "is not a zsq integer model file", _HINT)
    version = obj.get("version")
    if version != FORMAT_VERSION:
        raise IncompatibleFormatError(path, f"has integer-model format version {version!r}, but this zsq_engine "
                                            f"reads version {FORMAT_VERSION}",
                                      "convert the fake-quant model again with this version (`zsq convert`)")
    try:
        check_payload(obj)
    except ValueError as exc:
        raise FileFormatError(path, f"is a damaged integer model file: {exc}", _HINT) from None
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise FileFormatError(path, f"is a damaged integer model file: its meta is a {type(meta).__name__}, "
                                    "not a dict", _HINT)
    model = IntModel.from_architecture(obj["architecture"])
    model.load_state_dict(obj["state_dict"], strict=True)
    return model.to(device).eval(), dict(obj.get("meta") or {})


def load(path, device="cpu") -> IntModel:
    """The :class:`IntModel` stored at ``path`` (see :func:`load_with_meta` for the metadata too)."""
    return load_with_meta(path, device)[0]
