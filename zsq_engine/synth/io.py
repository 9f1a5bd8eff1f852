"""Files of a synthesis run: the output file, and the resumable per-batch parts beside it.

Output (``torch.save``, read with ``weights_only=True``)::

    {"images": float32 [N, C, H, W] (normalised input space), "labels": int64 [N] or None,
     "meta": {"model", "method", "seed", "preset", "settings", "version", "num", "batch_size",
              "format", "model_fingerprint", "bn_loss_start": [...], "bn_loss_end": [...]}}

While a run is in progress, each finished batch b lives in ``<out>.parts/batch_{b:05d}.pt``
next to ``<out>.parts/manifest.json`` (the run's identity: model, weights fingerprint, method,
preset, settings, seed, num, batch size). Every file is written to a temporary file in the same
folder and renamed into place, so a crash leaves either the old state or the new one, never a
truncated file. Once all batches exist they are merged into ``<out>`` and the folder is removed.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from ..utils import FileFormatError, load_torch_file, save_torch_atomic, write_text_atomic

__all__ = ["FORMAT_VERSION", "load_output", "PartStore", "check_writable_output"]

FORMAT_VERSION = 1


_SYNTH_HINT = "pass a file written by `zsq synthesize --out FILE`"


def load_output(path) -> dict:
    """Load a synthesis output file (no pickled code runs) and check its layout.

    Raises FileNotFoundError, or :class:`zsq_engine.utils.FileFormatError` (a ValueError) for a
    file that is unreadable or not a synthesis output."""
    path = Path(path)
    obj = load_torch_file(path, "zsq synthesis output", _SYNTH_HINT)
    if not isinstance(obj, dict) or not {"images", "labels", "meta"} <= set(obj):
        kind = _describe(obj)
        raise FileFormatError(path, f"is not a zsq synthesis output (expected keys images, labels, meta; {kind})",
                              _SYNTH_HINT)
    images, labels, meta = obj["images"], obj["labels"], obj["meta"]
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.dtype.is_floating_point:
        raise FileFormatError(path, f"its images are not a float [N, C, H, W] tensor "
                                    f"(got {_describe(images)})", _SYNTH_HINT)
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.dim() != 1
                               or labels.shape[0] != images.shape[0] or labels.dtype.is_floating_point):
        raise FileFormatError(path, f"its labels are not an integer [N] tensor matching {images.shape[0]} images "
                                    f"(got {_describe(labels)})", _SYNTH_HINT)
    if not isinstance(meta, dict):
        raise FileFormatError(path, f"its meta is not a dict (got {type(meta).__name__})", _SYNTH_HINT)
    return obj


def _describe(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a {str(obj.dtype).replace('torch.', '')} tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, dict):
        keys = ", ".join(map(str, list(obj)[:6])) + (", ..." if len(obj) > 6 else "")
        return f"found keys {keys}" if obj else "found an empty dict"
    return f"found a {type(obj).__name__}"


def check_writable_output(out: Path) -> None:
    """Create the output's folder if needed and fail early, with a clear message, if it is not writable."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the output folder {parent}: {exc.strerror or exc}") from None
    if out.is_dir():
        raise ValueError(f"output {out} is a folder; give a file name such as {out / 'synth.pt'}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {parent} is not writable")


def _canonical(identity: dict) -> dict:
    return json.loads(json.dumps(identity, sort_keys=True))


def identity_mismatch(stored: dict, wanted: dict) -> Optional[str]:
    """None when two run identities agree, else a readable list of the differing keys."""
    stored, wanted = _canonical(stored), _canonical(wanted)
    diffs = [f"{k}: {stored.get(k)!r} (existing) vs {wanted.get(k)!r} (now)"
             for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]
    return "; ".join(diffs) if diffs else None


_PARTS_HINT = "delete the .parts folder (or pass --overwrite) to start the run over"


class PartStore:
    """The ``<out>.parts`` folder of a resumable run."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.dir = self.out.with_name(self.out.name + ".parts")
        self.manifest = self.dir / "manifest.json"

    def batch_path(self, b: int) -> Path:
        return self.dir / f"batch_{b:05d}.pt"

    def stored_identity(self) -> Optional[dict]:
        if not self.manifest.is_file():
            return None
        try:
            identity = json.loads(self.manifest.read_text())
        except (ValueError, UnicodeDecodeError):
            identity = None
        if not isinstance(identity, dict):
            raise FileFormatError(self.manifest, "is not a readable run manifest", _PARTS_HINT)
        return identity

    def done_batches(self) -> int:
        """How many finished batch files the folder holds."""
        return len(list(self.dir.glob("batch_*.pt"))) if self.dir.is_dir() else 0

    def reset(self, identity: dict) -> None:
        """Start (or restart) the folder for ``identity``; existing parts stay if it matches."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.manifest, json.dumps(_canonical(identity), indent=1, sort_keys=True))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def has_batch(self, b: int) -> bool:
        return self.batch_path(b).is_file()

    def write_batch(self, b: int, payload: dict) -> None:
        save_torch_atomic(payload, self.batch_path(b))

    def read_batch(self, b: int) -> dict:
        return load_torch_file(self.batch_path(b), "synthesis part", _PARTS_HINT)

    def write_extra(self, name: str, obj) -> None:
        save_torch_atomic(obj, self.dir / name)

    def read_extra(self, name: str):
        path = self.dir / name
        return load_torch_file(path, "synthesis part", _PARTS_HINT) if path.is_file() else None
