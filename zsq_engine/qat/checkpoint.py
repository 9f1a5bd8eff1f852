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

from ..synth.io import save_atomic

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
    save_atomic({"format": FORMAT_VERSION, **payload}, path)


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"QAT checkpoint {path} does not exist")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_VERSION or "identity" not in obj:
        raise ValueError(f"{path} is not a zsq QAT checkpoint (format {FORMAT_VERSION})")
    return obj


def _canonical(d: dict) -> dict:
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def identity_mismatch(stored: dict, wanted: dict) -> Optional[str]:
    """None when the two run identities agree, else the differing keys, readable."""
    a, b = _canonical(stored), _canonical(wanted)
    diffs = [f"{k}: {a.get(k)!r} (checkpoint) vs {b.get(k)!r} (now)" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    return "; ".join(diffs) if diffs else None
