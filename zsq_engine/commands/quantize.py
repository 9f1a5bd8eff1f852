"""``zsq quantize``: block-reconstruction PTQ (Genie-M, BRECQ, QDrop) from synthetic or real data."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

import torch

from . import common, eval_data, guard, synth_free_args

_EPILOG = """data:
  real       N real images (the real-data upper bound): Fashion-MNIST TRAINING images for
             fmnist_resnet, a seeded random subset of the ImageFolder --calib-dir otherwise
  FILE.pt    synthetic images written by `zsq synthesize --model <same model> --out FILE.pt`
presets (per unit: iterations, samples, batch size):
  fast       250, 256, 32 (default; the Fashion-MNIST ResNet in about a minute on a 2-core CPU)
  paper      20000, 1024, 32 (the published settings: hours on a CPU)
A data file with fewer images than the preset asks is used whole (the run says so). --out is never
replaced without --overwrite, and never when it names the --data file.
data-parallel: `torchrun --nproc_per_node P -m zsq_engine.cli quantize ...` shares every batch
between P processes (gloo on CPU, NCCL on GPUs, one GPU each); process 0 writes the output."""


def add_parser(subparsers) -> None:
    from zsq_engine.recon import METHODS, PRESETS

    p = subparsers.add_parser(
        "quantize", help="quantize a model by block reconstruction (Genie-M, BRECQ, QDrop)",
        description="Quantize a pretrained model with AdaRound block reconstruction, calibrated on synthetic "
                    "(zero-shot) or real images, save it and print its test accuracy.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fmnist_resnet",
                   help="registered model name (`zsq info` lists them) or package.module:factory "
                        "(default fmnist_resnet)")
    eval_data.add_model_args(p)
    eval_data.add_val_args(p)
    p.add_argument("--calib-dir", default=None, help="ImageFolder of real calibration images for --data real")
    p.add_argument("--data", required=True, help="'real' or a .pt file from `zsq synthesize`")
    p.add_argument("--wbits", type=int, default=4, help="weight bits of the inner layers, 2..8 (default 4)")
    p.add_argument("--abits", type=int, default=4, help="activation bits of the inner layers, 2..8 (default 4)")
    p.add_argument("--method", default="genie", choices=METHODS, help="reconstruction method (default genie)")
    p.add_argument("--preset", default=common.DEFAULT_PRESET, choices=sorted(PRESETS), help=common.PRESET_HELP)
    p.add_argument("--iters", type=common.positive_int, default=None, help="iterations per unit (overrides preset)")
    p.add_argument("--num", type=common.positive_int, default=None, help="calibration images (overrides preset)")
    p.add_argument("--out", required=True, help="output file for the quantized model (.pt)")
    common.add_overwrite_arg(p, "--out")
    p.add_argument("--checkpoint", default=None,
                   help="per-unit progress file, written after every unit (default <out>.ckpt; removed at the end)")
    p.add_argument("--resume", action="store_true",
                   help="continue the killed run in --checkpoint at the unit where it stopped (same result)")
    synth_free_args.add_equalize_arg(p)
    synth_free_args.add_rounding_init_arg(p)
    synth_free_args.add_bits_budget_arg(p)
    p.add_argument("--eval-limit", type=common.positive_int, default=None,
                   help="evaluate on the first N test / --val-dir images only (default: all)")
    common.add_device_args(p)
    common.add_data_args(p)
    p.set_defaults(run=run)


def read_data_file(data: str, arg: str = "--data") -> dict:
    """The synthesis output file ``data`` (checked layout), or a one-line error naming ``arg``."""
    from zsq_engine.synth.io import load_output

    return guard.load_input(Path(data), arg, load_output)


def load_calibration_data(data: str, model_name: str, model, num: int, data_dir, seed: int,
                          arg: str = "--data", preloaded: Optional[dict] = None, info=None,
                          calib_dir=None) -> torch.Tensor:
    """Images ``[N, C, H, W]`` for reconstruction: real training images or a synthesis output file
    (its first ``num``; ``preloaded``: that file as :func:`read_data_file` returned it). Raises
    :class:`.guard.CommandError` naming ``arg`` for a missing or unusable file, data of another
    model, empty data or images of the wrong shape."""
    from zsq_engine.models import get_model_info

    info = info or get_model_info(model_name)
    if data == "real":
        if calib_dir:
            return eval_data.folder_images(calib_dir, info, num, seed)
        if model_name != "fmnist_resnet":
            raise guard.UsageError(f"{arg} real needs real images", f"--model {model_name}",
                                   "there is no built-in real data for it",
                                   "pass --calib-dir (an ImageFolder of real images) or a file from `zsq synthesize`")
        from ..data.sources import fmnist_calibration

        return torch.cat([x for x, _ in fmnist_calibration(num, data_dir, seed)])
    path = Path(data)
    obj = read_data_file(data, arg) if preloaded is None else preloaded
    meta = obj.get("meta") or {}
    images = obj["images"]

    def unusable(why: str, todo: str) -> guard.CommandError:
        return guard.CommandError(f"cannot use {arg}", str(path), why, todo)

    fingerprint = meta.get("model_fingerprint")
    from zsq_engine.utils import model_fingerprint

    mine = model_fingerprint(model) if fingerprint is not None else None
    # a model object synthesized from Python is recorded by class name: identical weights suffice
    same_weights = fingerprint is not None and mine == fingerprint
    if meta.get("model") != model_name and not same_weights:
        raise unusable(f"it was synthesized for model {meta.get('model')!r}, not {model_name!r}",
                       f"run `zsq synthesize --model {model_name} --out FILE` first")
    if fingerprint is not None:
        if mine != fingerprint:
            raise unusable(f"it was synthesized from different {model_name} weights (fingerprint {fingerprint} vs "
                           f"{mine})", "synthesize again from the weights you quantize")
    if images.shape[0] == 0:
        raise unusable(f"it holds no images (shape {tuple(images.shape)})", "synthesize some first")
    if tuple(images.shape[1:]) != tuple(info.input_shape):
        raise unusable(f"it holds images of shape {tuple(images.shape[1:])}, but {model_name} takes "
                       f"{tuple(info.input_shape)}", f"synthesize for --model {model_name}")
    if not bool(torch.isfinite(images).all()):
        raise unusable("its images hold NaN or infinite values", "synthesize them again")
    return images[:num].float()


def check_eval_data(model_name: str, data_dir, need_train: bool = False) -> None:
    """Fashion-MNIST must be found before the work that ends with an evaluation on it."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise guard.CommandError("cannot read --data-dir", str(data_dir), "it is not a folder",
                                 "pass the folder holding the Fashion-MNIST idx files")
    if model_name != "fmnist_resnet" and not need_train:
        return
    from zsq_engine.data import find_fashion_mnist_dir

    for split in (("train", "test") if need_train else ("test",)):
        try:
            find_fashion_mnist_dir(split, data_dir)
        except FileNotFoundError as exc:
            raise guard.CommandError(f"Fashion-MNIST {split} split not found", str(data_dir or "default locations"),
                                     str(exc).splitlines()[0], "pass --data-dir or set $ZSQ_FMNIST_DIR") from None


def run(args: argparse.Namespace) -> int:
    from zsq_engine.recon import PRESETS, reconstruct_model, save_quantized

    # everything that can fail is checked before the reconstruction
    guard.check_model(args.model)
    guard.check_bits(args.wbits, "--wbits")
    guard.check_bits(args.abits, "--abits")
    guard.check_positive(args, "batch_size")
    if args.bits_budget is not None and not args.bits_budget > 0:
        raise guard.bad_value("--bits-budget", args.bits_budget, "must be a positive number of bits", "e.g. --bits-budget 4.5")
    if args.data == "real" and args.model != "fmnist_resnet" and not args.calib_dir:
        raise guard.UsageError("--data real needs real images", f"--model {args.model}",
                               "there is no built-in real data for it",
                               "pass --calib-dir (an ImageFolder of real images) or a file from `zsq synthesize`")
    guard.image_folders(("--val-dir", args.val_dir), ("--calib-dir", args.calib_dir))
    out = guard.output_file(args.out, "--out", overwrite=args.overwrite, inputs=[args.data, args.weights])
    checkpoint = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".ckpt")
    if checkpoint.exists() and not args.resume:
        raise guard.UsageError("a reconstruction checkpoint exists", str(checkpoint),
                               "an earlier run of this output stopped before it finished",
                               "pass --resume to continue it, or delete the file to start over")
    if args.resume and not checkpoint.exists():
        raise guard.UsageError("nothing to resume", str(checkpoint), "the checkpoint file does not exist",
                               "run without --resume to start, or pass the --checkpoint of the stopped run")
    device = common.resolve_device(args.device)
    guard.check_backend_env(device)
    check_eval_data(args.model, args.data_dir, need_train=args.data == "real" and not args.calib_dir)
    data = None if args.data == "real" else read_data_file(args.data)  # a bad file fails before the model
    torch.manual_seed(args.seed)
    model, info = eval_data.load_model(args)
    test, no_test = eval_data.val_batches(args, info, args.eval_limit)  # folder errors before the long run
    wanted = args.num or PRESETS[args.preset]["num"]
    images = load_calibration_data(args.data, args.model, model, wanted, args.data_dir, args.seed, preloaded=data,
                                   info=info, calib_dir=args.calib_dir)
    if images.shape[0] < wanted:
        print(f"note: --data {args.data} holds {images.shape[0]} images but "
              f"{'--num' if args.num else f'preset {args.preset}'} asks for {wanted}: using all {images.shape[0]} "
              "(synthesize more, or pass --num to choose the number)", flush=True)
    num = images.shape[0]
    print(f"reconstructing {args.model} W{args.wbits}A{args.abits} ({args.method}, preset {args.preset}) on "
          f"{num} images", flush=True)
    t0 = time.perf_counter()
    model, extra = synth_free_args.maybe_equalize(args, model)
    layer_bits, plan_meta = synth_free_args.maybe_plan_bits(args, model, images)
    result = reconstruct_model(model, images, args.wbits, args.abits, method=args.method, preset=args.preset,
                               iters=args.iters, num=num, seed=args.seed, device=device,
                               show_progress=not args.no_progress, checkpoint=checkpoint, layer_bits=layer_bits,
                               rounding_init=args.rounding_init)
    seconds = time.perf_counter() - t0
    if result.meta.get("rank", 0) != 0:  # under torchrun every process holds the same model
        return 0
    meta = {"model": args.model, "data": args.data, **result.meta, "units_report": result.units, **extra,
            **plan_meta}
    acc = None
    if test is not None:
        print(f"reconstruction done in {seconds:.1f} s; evaluating on {no_test}", flush=True)
        acc = eval_data.accuracy(result.model, test, device, desc="test", show_progress=not args.no_progress)
        meta["accuracy"], meta["top5"] = acc["top1"], acc["top5"]
    with guard.writing(out):
        save_quantized(out, result.model, meta)
    checkpoint.unlink(missing_ok=True)  # the output now holds everything it had
    bits = f"W{args.wbits}A{args.abits}"
    print(f"zsq quantize: {args.model} {bits} {args.method} (preset {args.preset}, {result.meta['num_samples']} "
          f"{'real' if args.data == 'real' else 'synthetic'} images) in {seconds:.1f} s -> {args.out}")
    if result.meta.get("resumed_units"):
        print(f"  (resumed: the first {result.meta['resumed_units']} units came from {checkpoint})")
    for u in result.units:
        print(f"  {u['name']:12s} {u['type']:12s} loss {u['mse_before']:.4g} -> {u['mse_after']:.4g} "
              f"({u['seconds']:.1f} s{'; ended worse, kept its calibrated start' if u.get('kept') == 'start' else ''})")
    for s in result.meta.get("skipped_units", []):
        print(f"  {s['name']:12s} not reconstructed (kept naive rounding): {s['reason']}")
    if acc is not None:
        print(f"test accuracy on {no_test}: {eval_data.format_accuracy(acc)}")
    else:
        print(f"({no_test})")
    return 0
