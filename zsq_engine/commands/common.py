"""Arguments and helpers shared by several sub-commands."""
from __future__ import annotations

import argparse
import re
from typing import List, Tuple

import torch

from .guard import UsageError, bad_value

# One default policy across the commands that optimise something: the short CPU-sized preset,
# with the published settings one flag away.
DEFAULT_PRESET = "fast"
PRESET_HELP = ("fast (default: short runs sized for a CPU) or paper (the published settings: hours on a CPU); "
               "see below")


def add_overwrite_arg(p: argparse.ArgumentParser, what: str = "output") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace an existing {what} (never one of the command's inputs)")


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available; default)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true",
                   help="hide progress bars (one line per phase is still printed)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder with the Fashion-MNIST idx(.gz) files (default: $ZSQ_FMNIST_DIR, then the "
                        "Debian package dataset-fashion-mnist)")
    p.add_argument("--batch-size", type=int, default=500, help="evaluation batch size (default 500)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise bad_value("--device", name, "not a device", "pass cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise bad_value("--device", name, f"{device.type} devices are not supported", "pass cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested", name, "no CUDA device is visible",
                         "pass --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise bad_value("--device", name, f"only {torch.cuda.device_count()} CUDA device(s) are visible",
                        "pass cuda:0 or auto")
    return device


_BITS_RE = re.compile(r"^[wW](\d)[aA](\d)$")


def parse_bit_configs(values: List[str]) -> List[Tuple[int, int]]:
    """['W8A8', 'w4a4'] -> [(8, 8), (4, 4)], with a clear error for anything else."""
    configs = []
    for v in values:
        m = _BITS_RE.match(v)
        if not m or not all(2 <= int(b) <= 8 for b in m.groups()):
            raise bad_value("--bits", v, "not of the form W<bits>A<bits> with bits in 2..8", "e.g. --bits W8A8 W4A4")
        configs.append((int(m.group(1)), int(m.group(2))))
    return configs


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value
