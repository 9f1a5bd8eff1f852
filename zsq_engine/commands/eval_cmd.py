"""``zsq eval``: accuracy of a float model and of its naive post-training quantized versions, or of
a saved fake-quant / integer model file."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import common, eval_data, guard, synth_free_args


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="accuracy of FP and naive-PTQ quantized models, or of a saved model file",
        description="Evaluate a model's top-1 accuracy in float and after naive post-training quantization "
                    "(ranges calibrated on real images, no optimisation). Fashion-MNIST for fmnist_resnet, "
                    "an ImageNet-style folder (--val-dir) for the ImageNet models.")
    p.add_argument("--model", default="fmnist_resnet",
                   help="registered model name (`zsq info` lists them) or package.module:factory "
                        "(default fmnist_resnet)")
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
    synth_free_args.add_equalize_arg(p)
    synth_free_args.add_weight_rounding_arg(p)
    common.add_device_args(p)
    common.add_data_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zsq_engine.models import get_model

    from .accuracy import accuracy_rows, rows_as_table
    from .convert import load_float_model
    from ..data.sources import fmnist_batches, fmnist_calibration, imagefolder_batches
    from .quantize import check_eval_data

    guard.check_positive(args, "batch_size")
    guard.image_folders(("--val-dir", args.val_dir), ("--calib-dir", args.calib_dir))
    if args.checkpoint or args.int_model:
        return _run_saved(args)
    guard.check_model(args.model)
    configs = common.parse_bit_configs(args.bits)
    guard.check_bits(args.first_last_bits, "--first-last-bits")
    if args.model != "fmnist_resnet" and args.val_dir is None:
        raise guard.UsageError(f"--val-dir is required for {args.model}", f"--model {args.model}",
                               "there is no built-in test set for it", "pass an ImageFolder of validation images")
    if args.weights is not None:
        guard.input_file(args.weights, "--weights")
    data = None
    if args.calib_data:
        from .quantize import read_data_file

        data = read_data_file(args.calib_data, "--calib-data")  # a bad file fails before the model
    device = common.resolve_device(args.device)
    guard.check_backend_env(device)
    fmnist_test = args.model == "fmnist_resnet" and not args.val_dir
    check_eval_data(args.model, args.data_dir, need_train=fmnist_test and not args.calib_data)
    torch.manual_seed(args.seed)
    if args.weights is None and args.model != "fmnist_resnet":
        model = get_model(args.model, pretrained=True)  # ImportError / RuntimeError say where weights come from
    else:
        model = load_float_model(args.model, args.weights)
    info = eval_data.model_info(args, model=model)
    model, _ = synth_free_args.maybe_equalize(args, model)
    if fmnist_test:
        test = fmnist_batches("test", args.batch_size, args.data_dir)
        calib = None if args.calib_data else fmnist_calibration(args.calib_images, args.data_dir, args.seed)
        where = "Fashion-MNIST test split"
    else:
        test, where = eval_data.val_batches(args, info, args.limit)
        calib = None if args.calib_data else imagefolder_batches(args.calib_dir or args.val_dir, args.model, 64,
                                                                 args.calib_images, info=info)
    if args.calib_data:
        from .quantize import load_calibration_data

        images = load_calibration_data(args.calib_data, args.model, model, args.calib_images, None, args.seed,
                                       arg="--calib-data", preloaded=data, info=info)
        calib = [(images[i:i + 64], torch.zeros(images[i:i + 64].shape[0], dtype=torch.int64))
                 for i in range(0, images.shape[0], 64)]
        where += f", ranges from {images.shape[0]} synthetic images of {args.calib_data}"
    def on_row(r: dict) -> None:  # one line per measured row, also with --no-progress
        bits = "FP32" if r["wbits"] == 32 else f"W{r['wbits']}A{r['abits']}"
        print(f"  {r['method']} {bits}: {r['accuracy']:.2f} % ({r['seconds']:.1f} s)", flush=True)

    rows = accuracy_rows(model, configs, calib, test, device, show_progress=not args.no_progress,
                         first_last_bits=args.first_last_bits, on_row=on_row,
                         weight_rounding=args.weight_rounding)
    print(f"{args.model} on {where} ({device}):")
    print(rows_as_table(rows, top5=bool(args.val_dir)))
    return 0


def _run_saved(args: argparse.Namespace) -> int:
    """Accuracy of a saved fake-quant (``--checkpoint``) or integer (``--int-model``) model file."""
    if args.checkpoint and args.int_model:
        raise guard.UsageError("conflicting inputs", "--checkpoint / --int-model", "give one of them, not both",
                               "evaluate one file per run")
    if args.int_model:
        from zsq_engine.runtime.io import load_with_meta

        path, arg, kind, loader = args.int_model, "--int-model", "integer", load_with_meta
    else:
        from zsq_engine.recon import load_quantized

        path, arg, kind, loader = args.checkpoint, "--checkpoint", "fake-quant", load_quantized
    model, meta = guard.load_input(Path(guard.input_file(path, arg)), arg, loader)
    name = meta.get("model")
    if name is None:
        raise guard.CommandError(f"cannot use {arg}", path, "the file does not record its model name, so its "
                                 "preprocessing is unknown", "pass a file written by zsq quantize / qat / convert")
    device = common.resolve_device(args.device)
    guard.check_backend_env(device)
    info = eval_data.model_info(args, name)
    test, where = eval_data.val_batches(args, info, args.limit)
    if test is None:
        raise guard.UsageError("no evaluation data", f"--model {name}", where.split(": ", 1)[0],
                               "pass --val-dir (an ImageFolder of validation images)")
    acc = eval_data.accuracy(model, test, device, desc=kind, show_progress=not args.no_progress)
    print(f"{name} {kind} model {path} (W{meta.get('wbits')}A{meta.get('abits')}, "
          f"{meta.get('method') or meta.get('source')}) on {where}: {eval_data.format_accuracy(acc)}")
    return 0
