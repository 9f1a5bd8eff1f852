"""``zsq eval``: accuracy of a float model and of its naive post-training quantized versions."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import common, guard


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="accuracy of FP and naive-PTQ quantized models",
        description="Evaluate a model's top-1 accuracy in float and after naive post-training quantization "
                    "(ranges calibrated on real images, no optimisation). Fashion-MNIST for fmnist_resnet, "
                    "an ImageNet-style folder (--val-dir) for the ImageNet models.")
    p.add_argument("--model", default="fmnist_resnet",
                   help="registered model name; `zsq info` lists them (default fmnist_resnet)")
    p.add_argument("--weights", default=None, help="state-dict file to load (default: the model's own weights)")
    p.add_argument("--bits", nargs="*", default=["W8A8", "W4A4"],
                   help="quantized configurations, e.g. W8A8 W4A4 (default); none = FP only")
    p.add_argument("--first-last-bits", type=int, default=8, help="bits of the first/last layer (default 8)")
    p.add_argument("--calib-images", type=common.positive_int, default=512,
                   help="images used to calibrate activation ranges (default 512)")
    p.add_argument("--val-dir", default=None, help="ImageFolder validation directory (ImageNet models)")
    p.add_argument("--calib-dir", default=None,
                   help="ImageFolder directory for calibration (ImageNet models; default: --val-dir)")
    p.add_argument("--limit", type=common.positive_int, default=None,
                   help="evaluate only the first N images of --val-dir")
    common.add_device_args(p)
    common.add_data_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zsq_engine.models import get_model

    from .accuracy import accuracy_rows, rows_as_table
    from .convert import load_float_model
    from .data_sources import fmnist_batches, fmnist_calibration, imagefolder_batches
    from .quantize import check_eval_data

    guard.check_model(args.model)
    configs = common.parse_bit_configs(args.bits)
    guard.check_bits(args.first_last_bits, "--first-last-bits")
    guard.check_positive(args, "batch_size")
    if args.model != "fmnist_resnet" and args.val_dir is None:
        raise guard.UsageError(f"--val-dir is required for {args.model}", f"--model {args.model}",
                               "there is no built-in test set for it", "pass an ImageFolder of validation images")
    for flag, folder in (("--val-dir", args.val_dir), ("--calib-dir", args.calib_dir)):
        if folder is not None and not Path(folder).is_dir():
            raise guard.CommandError(f"cannot read {flag}", folder, "it is not a folder",
                                     "pass an ImageFolder (root/<class>/<image>)")
    if args.weights is not None:
        guard.input_file(args.weights, "--weights")
    device = common.resolve_device(args.device)
    guard.check_backend_env(device)
    check_eval_data(args.model, args.data_dir, need_train=args.model == "fmnist_resnet")
    torch.manual_seed(args.seed)
    if args.weights is None and args.model != "fmnist_resnet":
        model = get_model(args.model, pretrained=True)  # ImportError / RuntimeError say where weights come from
    else:
        model = load_float_model(args.model, args.weights)
    if args.model == "fmnist_resnet":
        test = fmnist_batches("test", args.batch_size, args.data_dir)
        calib = fmnist_calibration(args.calib_images, args.data_dir, args.seed)
        where = "Fashion-MNIST test split"
    else:
        test = imagefolder_batches(args.val_dir, args.model, args.batch_size, args.limit)
        calib = imagefolder_batches(args.calib_dir or args.val_dir, args.model, 64, args.calib_images)
        where = args.val_dir
    def on_row(r: dict) -> None:  # one line per measured row, also with --no-progress
        bits = "FP32" if r["wbits"] == 32 else f"W{r['wbits']}A{r['abits']}"
        print(f"  {r['method']} {bits}: {r['accuracy']:.2f} % ({r['seconds']:.1f} s)", flush=True)

    rows = accuracy_rows(model, configs, calib, test, device, show_progress=not args.no_progress,
                         first_last_bits=args.first_last_bits, on_row=on_row)
    print(f"{args.model} on {where} ({device}):")
    print(rows_as_table(rows))
    return 0
