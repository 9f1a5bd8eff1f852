"""``zsq eval``: accuracy of a float model and of its naive post-training quantized versions."""
from __future__ import annotations

import argparse

import torch

from . import common, synth_free_args


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="accuracy of FP and naive-PTQ quantized models",
        description="Evaluate a model's top-1 accuracy in float and after naive post-training quantization "
                    "(ranges calibrated on real images, no optimisation). Fashion-MNIST for fmnist_resnet, "
                    "an ImageNet-style folder (--val-dir) for the ImageNet models.")
    p.add_argument("--model", default="fmnist_resnet", help="model name (see `zsq info`; default fmnist_resnet)")
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
    synth_free_args.add_equalize_arg(p)
    common.add_device_args(p)
    common.add_data_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zsq_engine.models import get_model

    from .accuracy import accuracy_rows, rows_as_table
    from .data_sources import fmnist_batches, fmnist_calibration, imagefolder_batches

    configs = common.parse_bit_configs(args.bits)
    device = common.resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = get_model(args.model, pretrained=args.weights is None, weights_path=args.weights)
    model, _ = synth_free_args.maybe_equalize(args, model)
    if args.model == "fmnist_resnet":
        test = fmnist_batches("test", args.batch_size, args.data_dir)
        calib = fmnist_calibration(args.calib_images, args.data_dir, args.seed)
        where = "Fashion-MNIST test split"
    else:
        if args.val_dir is None:
            raise SystemExit(f"error: --val-dir is required for {args.model} (an ImageFolder of validation images)")
        test = imagefolder_batches(args.val_dir, args.model, args.batch_size, args.limit)
        calib = imagefolder_batches(args.calib_dir or args.val_dir, args.model, 64, args.calib_images)
        where = args.val_dir
    rows = accuracy_rows(model, configs, calib, test, device, show_progress=not args.no_progress,
                         first_last_bits=args.first_last_bits)
    print(f"{args.model} on {where} ({device}):")
    print(rows_as_table(rows))
    return 0
