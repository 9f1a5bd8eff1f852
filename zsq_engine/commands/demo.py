"""``zsq demo``: the main job on the embedded default model (Fashion-MNIST ResNet).

For now: FP accuracy, then W8A8 and W4A4 naive post-training quantization (ranges calibrated on
512 real training images, no optimisation) on the 10k test images, as a table; the report is
also written as markdown + JSON. Zero-shot synthesis and reconstruction join this pipeline as
they land.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from . import common


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="end-to-end demo on the embedded Fashion-MNIST ResNet",
        description="Evaluate the committed Fashion-MNIST ResNet in float and after naive post-training "
                    "quantization (W8A8, W4A4 by default), print an accuracy table and write it to --out.")
    p.add_argument("--bits", nargs="*", default=["W8A8", "W4A4"], help="configurations (default W8A8 W4A4)")
    p.add_argument("--calib-images", type=common.positive_int, default=512,
                   help="training images used to calibrate activation ranges (default 512)")
    p.add_argument("--out", default="runs/demo", help="output folder for report.md and results.json "
                                                      "(default runs/demo)")
    common.add_device_args(p)
    common.add_data_args(p)
    p.set_defaults(run=run)


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file + rename so an interrupted run never leaves half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    from zsq_engine import __version__
    from zsq_engine.models import get_model

    from .accuracy import accuracy_rows, rows_as_table
    from .data_sources import fmnist_batches, fmnist_calibration

    configs = common.parse_bit_configs(args.bits)
    device = common.resolve_device(args.device)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model = get_model("fmnist_resnet", pretrained=True)
    test = fmnist_batches("test", args.batch_size, args.data_dir)
    calib = fmnist_calibration(args.calib_images, args.data_dir, args.seed)
    print(f"zsq demo: fmnist_resnet, Fashion-MNIST test split (10000 images), device {device}")
    rows = accuracy_rows(model, configs, calib, test, device, show_progress=not args.no_progress)
    table = rows_as_table(rows)
    elapsed = time.perf_counter() - t0
    print(table)
    print(f"total {elapsed:.1f} s")

    meta = {"zsq_engine": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "seed": args.seed, "calib_images": args.calib_images,
            "seconds": round(elapsed, 2)}
    out = Path(args.out)
    _write_atomic(out / "results.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    _write_atomic(out / "report.md", "\n".join([
        "# zsq demo: Fashion-MNIST ResNet", "",
        f"Naive PTQ = per-channel asymmetric weights (Lp scale search), per-tensor activations with min/max "
        f"ranges from {args.calib_images} training images; first and last layer 8-bit.", "",
        table, "",
        "Run: " + ", ".join(f"{k}={v}" for k, v in meta.items()), ""]))
    print(f"report written to {out / 'report.md'}")
    return 0
