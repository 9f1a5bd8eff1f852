"""Checkpoints of a QAT run: everything needed to continue bit-for-bit.

``torch.save`` dict (read with ``weights_only=True``)::

    {"format": 1, "identity": {...run settings...}, "epoch": completed QAT epochs,
     "prepared": warm-up + calibration done, "student", "generator", "student_opt",
     "generator_opt", "student_sched", "generator_sched", "pool", "history",
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]}}

Written to a temporary file beside the target and renamed into place, so an interruption leaves
the previous checkpoint intact.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from ..utils import FileFormatError, load_torch_file, save_torch_atomic

__all__ = ["FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng",
           "identity_mismatch"]

FORMAT_VERSION = 1


def capture_rng(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch_atomic({"format": FORMAT_VERSION, **payload}, path)


_HINT = "pass the .ckpt file a `zsq qat` run wrote, or start a fresh run without --resume"


def load_checkpoint(path) -> dict:
    """The checkpoint dict at ``path``. Raises FileNotFoundError, or
    :class:`zsq_engine.utils.FileFormatError` (a ValueError) for an unreadable or foreign file."""
    path = Path(path)
    obj = load_torch_file(path, "zsq QAT checkpoint", _HINT)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_VERSION or not isinstance(obj.get("identity"), dict):
        raise FileFormatError(path, f"is not a zsq QAT checkpoint (format {FORMAT_VERSION})", _HINT)
    missing = [k for k in ("epoch", "prepared", "student", "history", "rng") if k not in obj]
    if missing:
        raise FileFormatError(path, f"is an incomplete zsq QAT checkpoint (no {', '.join(missing)})", _HINT)
    return obj


def _canonical(d: dict) -> dict:
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def identity_mismatch(stored: dict, wanted: dict) -> Optional[str]:
    """None when the two run identities agree, else the differing keys, readable."""
    a, b = _canonical(stored), _canonical(wanted)
    diffs = [f"{k}: {a.get(k)!r} (checkpoint) vs {b.get(k)!r} (now)" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    return "; ".join(diffs) if diffs else None
