"""``zsq quantize``: block-reconstruction PTQ (Genie-M, BRECQ, QDrop) from synthetic or real data."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from . import common, eval_data

_EPILOG = """data:
  real       N real images (the real-data upper bound): Fashion-MNIST TRAINING images for
             fmnist_resnet, a seeded random subset of the ImageFolder --calib-dir otherwise
  FILE.pt    synthetic images written by `zsq synthesize --model <same model> --out FILE.pt`
presets (per unit: iterations, samples, batch size):
  paper      20000, 1024, 32 (the published settings)
  fast       250, 256, 32 (the Fashion-MNIST ResNet in about a minute on a 2-core CPU)
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
                   help="registered model name or package.module:factory (default fmnist_resnet)")
    eval_data.add_model_args(p)
    eval_data.add_val_args(p)
    p.add_argument("--calib-dir", default=None, help="ImageFolder of real calibration images for --data real")
    p.add_argument("--data", required=True, help="'real' or a .pt file from `zsq synthesize`")
    p.add_argument("--wbits", type=int, default=4, help="weight bits of the inner layers, 2..8 (default 4)")
    p.add_argument("--abits", type=int, default=4, help="activation bits of the inner layers, 2..8 (default 4)")
    p.add_argument("--method", default="genie", choices=METHODS, help="reconstruction method (default genie)")
    p.add_argument("--preset", default="fast", choices=sorted(PRESETS), help="see below (default fast)")
    p.add_argument("--iters", type=common.positive_int, default=None, help="iterations per unit (overrides preset)")
    p.add_argument("--num", type=common.positive_int, default=None, help="calibration images (overrides preset)")
    p.add_argument("--out", required=True, help="output file for the quantized model (.pt)")
    p.add_argument("--checkpoint", default=None,
                   help="per-unit progress file, written after every unit (default <out>.ckpt; removed at the end)")
    p.add_argument("--resume", action="store_true",
                   help="continue the killed run in --checkpoint at the unit where it stopped (same result)")
    p.add_argument("--eval-limit", type=common.positive_int, default=None,
                   help="evaluate on the first N test / --val-dir images only (default: all)")
    common.add_device_args(p)
    common.add_data_args(p)
    p.set_defaults(run=run)


def load_calibration_data(data: str, model_name: str, model, num: int, data_dir, seed: int, info=None,
                          calib_dir=None) -> torch.Tensor:
    """Images ``[N, C, H, W]`` for reconstruction: real training images or a synthesis output file.

    Raises ValueError for data of another model, empty data or an unusable file.
    """
    from zsq_engine.models import get_model_info

    info = info or get_model_info(model_name)
    if data == "real":
        if calib_dir:
            return eval_data.folder_images(calib_dir, info, num, seed)
        if model_name != "fmnist_resnet":
            raise ValueError(f"--data real for {model_name} needs --calib-dir (an ImageFolder of real images); "
                             "or pass a file from `zsq synthesize`")
        from .data_sources import fmnist_calibration

        return torch.cat([x for x, _ in fmnist_calibration(num, data_dir, seed)])
    from zsq_engine.synth.io import load_output

    path = Path(data)
    obj = load_output(path)
    meta = obj.get("meta") or {}
    images = obj["images"]
    fingerprint = meta.get("model_fingerprint")
    from zsq_engine.synth import api as synth_api

    mine = getattr(synth_api, "_model_fingerprint", None)
    # a model object synthesized from Python is recorded by class name: identical weights suffice
    same_weights = fingerprint is not None and mine is not None and mine(model) == fingerprint
    if meta.get("model") != model_name and not same_weights:
        raise ValueError(f"{path} was synthesized for model {meta.get('model')!r}, not {model_name!r}; "
                         f"run `zsq synthesize --model {model_name} --out FILE` first")
    if fingerprint is not None:
        if mine is not None and mine(model) != fingerprint:
            raise ValueError(f"{path} was synthesized from different {model_name} weights (fingerprint "
                             f"{fingerprint} vs {mine(model)})")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"{path} holds no images (shape {tuple(getattr(images, 'shape', ()))})")
    if tuple(images.shape[1:]) != tuple(info.input_shape):
        raise ValueError(f"{path} holds images of shape {tuple(images.shape[1:])}, but {model_name} takes "
                         f"{tuple(info.input_shape)}")
    return images[:num].float()


def run(args: argparse.Namespace) -> int:
    from zsq_engine.quant import check_bits
    from zsq_engine.recon import PRESETS, reconstruct_model, save_quantized

    check_bits(args.wbits, "--wbits")
    check_bits(args.abits, "--abits")
    device = common.resolve_device(args.device)
    out = Path(args.out)
    checkpoint = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".ckpt")
    if checkpoint.exists() and not args.resume:
        raise ValueError(f"checkpoint {checkpoint} exists: pass --resume to continue that run, or delete it "
                         "to start over")
    torch.manual_seed(args.seed)
    model, info = eval_data.load_model(args)
    test, no_test = eval_data.val_batches(args, info, args.eval_limit)  # folder errors before the long run
    num = args.num or PRESETS[args.preset]["num"]
    images = load_calibration_data(args.data, args.model, model, num, args.data_dir, args.seed, info=info,
                                   calib_dir=args.calib_dir)
    t0 = time.perf_counter()
    result = reconstruct_model(model, images, args.wbits, args.abits, method=args.method, preset=args.preset,
                               iters=args.iters, num=num, seed=args.seed, device=device,
                               show_progress=not args.no_progress, checkpoint=checkpoint)
    seconds = time.perf_counter() - t0
    if result.meta.get("rank", 0) != 0:  # under torchrun every process holds the same model
        return 0
    meta = {"model": args.model, "data": args.data, **result.meta, "units_report": result.units}
    acc = None
    if test is not None:
        acc = eval_data.accuracy(result.model, test, device, desc="test", show_progress=not args.no_progress)
        meta["accuracy"], meta["top5"] = acc["top1"], acc["top5"]
    save_quantized(args.out, result.model, meta)
    checkpoint.unlink(missing_ok=True)  # the output now holds everything it had
    bits = f"W{args.wbits}A{args.abits}"
    print(f"zsq quantize: {args.model} {bits} {args.method} (preset {args.preset}, {result.meta['num_samples']} "
          f"{'real' if args.data == 'real' else 'synthetic'} images) in {seconds:.1f} s -> {args.out}")
    if result.meta.get("resumed_units"):
        print(f"  (resumed: the first {result.meta['resumed_units']} units came from {checkpoint})")
    for u in result.units:
        print(f"  {u['name']:12s} {u['type']:12s} loss {u['mse_before']:.4g} -> {u['mse_after']:.4g} "
              f"({u['seconds']:.1f} s)")
    for s in result.meta.get("skipped_units", []):
        print(f"  {s['name']:12s} not reconstructed (kept naive rounding): {s['reason']}")
    if acc is not None:
        print(f"test accuracy on {no_test}: {eval_data.format_accuracy(acc)}")
    else:
        print(f"({no_test})")
    return 0
