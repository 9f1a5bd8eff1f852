"""``zsq eval``: accuracy of a float model and of its naive post-training quantized versions."""
from __future__ import annotations

import argparse

import torch

from . import common, eval_data


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="accuracy of FP and naive-PTQ quantized models",
        description="Evaluate a model's top-1 accuracy in float and after naive post-training quantization "
                    "(ranges calibrated on real images, no optimisation). Fashion-MNIST for fmnist_resnet, "
                    "an ImageNet-style folder (--val-dir) for the ImageNet models.")
    p.add_argument("--model", default="fmnist_resnet",
                   help="model name (see `zsq info`) or package.module:factory (default fmnist_resnet)")
    p.add_argument("--weights", default=None, help="state-dict file to load (default: the model's own weights)")
    p.add_argument("--bits", nargs="*", default=["W8A8", "W4A4"],
                   help="quantized configurations, e.g. W8A8 W4A4 (default); none = FP only")
    p.add_argument("--first-last-bits", type=int, default=8, help="bits of the first/last layer (default 8)")
    p.add_argument("--calib-images", type=common.positive_int, default=512,
                   help="images used to calibrate activation ranges (default 512)")
    eval_data.add_val_args(p)
    eval_data.add_model_args(p, weights=False)
    p.add_argument("--checkpoint", default=None,
                   help="evaluate this fake-quant model file (from `zsq quantize` / `zsq qat`) instead")
    p.add_argument("--int-model", default=None, help="evaluate this integer model file (from `zsq convert`) instead")
    p.add_argument("--calib-dir", default=None,
                   help="ImageFolder directory for calibration (ImageNet models; default: --val-dir)")
    p.add_argument("--calib-data", default=None, metavar="FILE.pt",
                   help="calibrate the activation ranges on synthetic images from `zsq synthesize` (zero-shot "
                        "naive PTQ) instead of real ones")
    p.add_argument("--limit", type=common.positive_int, default=None,
                   help="evaluate only the first N images of --val-dir")
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
    if args.checkpoint or args.int_model:
        return _run_saved(args, device)
    model = get_model(args.model, pretrained=args.weights is None, weights_path=args.weights)
    info = eval_data.model_info(args, model=model)
    if args.model == "fmnist_resnet" and not args.val_dir:
        test = fmnist_batches("test", args.batch_size, args.data_dir)
        calib = fmnist_calibration(args.calib_images, args.data_dir, args.seed)
        where = "Fashion-MNIST test split"
    else:
        if args.val_dir is None:
            raise SystemExit(f"error: --val-dir is required for {args.model} (an ImageFolder of validation images)")
        test, where = eval_data.val_batches(args, info, args.limit)
        calib = None if args.calib_data else imagefolder_batches(args.calib_dir or args.val_dir, args.model, 64,
                                                                 args.calib_images, info=info)
    if args.calib_data:
        from .quantize import load_calibration_data

        images = load_calibration_data(args.calib_data, args.model, model, args.calib_images, None, args.seed, info=info)
        calib = [(images[i:i + 64], torch.zeros(images[i:i + 64].shape[0], dtype=torch.int64))
                 for i in range(0, images.shape[0], 64)]
        where += f", ranges from {images.shape[0]} synthetic images of {args.calib_data}"
    rows = accuracy_rows(model, configs, calib, test, device, show_progress=not args.no_progress,
                         first_last_bits=args.first_last_bits)
    print(f"{args.model} on {where} ({device}):")
    print(rows_as_table(rows, top5=bool(args.val_dir)))
    return 0


def _run_saved(args: argparse.Namespace, device: torch.device) -> int:
    """Accuracy of a saved fake-quant (``--checkpoint``) or integer (``--int-model``) model file."""
    if args.checkpoint and args.int_model:
        raise ValueError("give --checkpoint or --int-model, not both")
    if args.int_model:
        from zsq_engine.runtime.io import load_with_meta

        model, meta = load_with_meta(args.int_model)
        path, kind = args.int_model, "integer"
    else:
        from zsq_engine.recon import load_quantized

        model, meta = load_quantized(args.checkpoint)
        path, kind = args.checkpoint, "fake-quant"
    name = meta.get("model")
    if name is None:
        raise ValueError(f"{path} does not record its model name, so its preprocessing is unknown")
    info = eval_data.model_info(args, name)
    test, where = eval_data.val_batches(args, info, args.limit)
    if test is None:
        raise ValueError(where)
    acc = eval_data.accuracy(model, test, device, desc=kind, show_progress=not args.no_progress)
    print(f"{name} {kind} model {path} (W{meta.get('wbits')}A{meta.get('abits')}, {meta.get('method') or meta.get('source')}) "
          f"on {where}: {eval_data.format_accuracy(acc)}")
    return 0
