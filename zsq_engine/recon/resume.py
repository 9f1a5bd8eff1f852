"""Per-unit checkpoints that let a killed reconstruction continue at the unit where it stopped.

After every finished unit the whole quantized model's state (finished units hard-rounded and
baked, the rest as calibrated) and the unit reports are written atomically (temporary file +
rename) to one file, normally next to the output (``<out>.ckpt``). Everything a unit's
optimisation depends on is either in that state or derived from (seed, unit) alone, so a
resumed run gives the same model as an uninterrupted one. The file records a fingerprint of
the run's identity (float weights, calibration images, settings) and is refused for any other run.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

__all__ = ["RECON_CHECKPOINT_FORMAT", "run_fingerprint", "save_progress", "load_progress"]

RECON_CHECKPOINT_FORMAT = 1


def _tensor_bytes(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(str((t.dtype, tuple(t.shape))).encode())
    h.update(t.view(-1).view(torch.uint8).numpy().tobytes())


def run_fingerprint(model: nn.Module, images: torch.Tensor, settings: dict) -> str:
    """sha256 over the float model's state, the calibration images and the run settings."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        _tensor_bytes(h, t)
    _tensor_bytes(h, images)
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def save_progress(path, fingerprint: str, qmodel: nn.Module, reports: List[dict], skipped: List[dict],
                  done: int) -> None:
    """Write the state after ``done`` finished units atomically (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"format": RECON_CHECKPOINT_FORMAT, "fingerprint": fingerprint, "done": int(done),
           "reports": list(reports), "skipped": list(skipped),
           "state_dict": {k: v.detach().cpu() for k, v in qmodel.state_dict().items()}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_progress(path, fingerprint: str) -> Optional[Dict]:
    """The saved progress for this run, or None when ``path`` does not exist.

    Raises ValueError when the file is not a reconstruction checkpoint or belongs to another run
    (other weights, images or settings): continuing it would silently mix two runs.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise ValueError(f"reconstruction checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                         "delete it to start over") from exc
    if not isinstance(obj, dict) or obj.get("format") != RECON_CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a zsq reconstruction checkpoint (format {RECON_CHECKPOINT_FORMAT})")
    if obj["fingerprint"] != fingerprint:
        raise ValueError(f"reconstruction checkpoint {path} belongs to another run (other weights, calibration "
                         "images or settings); delete it or give another checkpoint path")
    return obj
