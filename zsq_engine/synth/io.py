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

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

__all__ = ["FORMAT_VERSION", "save_atomic", "load_output", "PartStore", "check_writable_output"]

FORMAT_VERSION = 1


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file in the target folder, fsync, then ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_output(path) -> dict:
    """Load a synthesis output file (no pickled code runs) and check its layout."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"synthesis output {path} does not exist")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not {"images", "labels", "meta"} <= set(obj):
        raise ValueError(f"{path} is not a zsq synthesis output (expected keys images, labels, meta)")
    return obj


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
        return json.loads(self.manifest.read_text())

    def reset(self, identity: dict) -> None:
        """Start (or restart) the folder for ``identity``; existing parts stay if it matches."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".manifest.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(_canonical(identity), f, indent=1, sort_keys=True)
        os.replace(tmp, self.manifest)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def has_batch(self, b: int) -> bool:
        return self.batch_path(b).is_file()

    def write_batch(self, b: int, payload: dict) -> None:
        save_atomic(payload, self.batch_path(b))

    def read_batch(self, b: int) -> dict:
        return torch.load(self.batch_path(b), map_location="cpu", weights_only=True)

    def write_extra(self, name: str, obj) -> None:
        save_atomic(obj, self.dir / name)

    def read_extra(self, name: str):
        path = self.dir / name
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
