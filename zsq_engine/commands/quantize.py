"""``zsq quantize``: block-reconstruction PTQ (Genie-M, BRECQ, QDrop) from synthetic or real data."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from . import common, synth_free_args

_EPILOG = """data:
  real       N Fashion-MNIST TRAINING images (the real-data upper bound; fmnist_resnet only)
  FILE.pt    synthetic images written by `zsq synthesize --model <same model> --out FILE.pt`
presets (per unit: iterations, samples, batch size):
  paper      20000, 1024, 32 (the published settings)
  fast       250, 256, 32 (the Fashion-MNIST ResNet in about a minute on a 2-core CPU)"""


def add_parser(subparsers) -> None:
    from zsq_engine.recon import METHODS, PRESETS

    p = subparsers.add_parser(
        "quantize", help="quantize a model by block reconstruction (Genie-M, BRECQ, QDrop)",
        description="Quantize a pretrained model with AdaRound block reconstruction, calibrated on synthetic "
                    "(zero-shot) or real images, save it and print its test accuracy.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fmnist_resnet", help="registered model name (default fmnist_resnet)")
    p.add_argument("--data", required=True, help="'real' or a .pt file from `zsq synthesize`")
    p.add_argument("--wbits", type=int, default=4, help="weight bits of the inner layers, 2..8 (default 4)")
    p.add_argument("--abits", type=int, default=4, help="activation bits of the inner layers, 2..8 (default 4)")
    p.add_argument("--method", default="genie", choices=METHODS, help="reconstruction method (default genie)")
    p.add_argument("--preset", default="fast", choices=sorted(PRESETS), help="see below (default fast)")
    p.add_argument("--iters", type=common.positive_int, default=None, help="iterations per unit (overrides preset)")
    p.add_argument("--num", type=common.positive_int, default=None, help="calibration images (overrides preset)")
    p.add_argument("--out", required=True, help="output file for the quantized model (.pt)")
    p.add_argument("--eval-limit", type=common.positive_int, default=None,
                   help="evaluate on the first N test images only (default: all 10000)")
    synth_free_args.add_equalize_arg(p)
    synth_free_args.add_bits_budget_arg(p)
    common.add_device_args(p)
    common.add_data_args(p)
    p.set_defaults(run=run)


def load_calibration_data(data: str, model_name: str, model, num: int, data_dir, seed: int) -> torch.Tensor:
    """Images ``[N, C, H, W]`` for reconstruction: real training images or a synthesis output file.

    Raises ValueError for data of another model, empty data or an unusable file.
    """
    from zsq_engine.models import get_model_info

    info = get_model_info(model_name)
    if data == "real":
        if model_name != "fmnist_resnet":
            raise ValueError(f"--data real is only available for fmnist_resnet; for {model_name} pass a file "
                             "from `zsq synthesize`")
        from .data_sources import fmnist_calibration

        return torch.cat([x for x, _ in fmnist_calibration(num, data_dir, seed)])
    from zsq_engine.synth.io import load_output

    path = Path(data)
    obj = load_output(path)
    meta = obj.get("meta") or {}
    images = obj["images"]
    if meta.get("model") != model_name:
        raise ValueError(f"{path} was synthesized for model {meta.get('model')!r}, not {model_name!r}; "
                         f"run `zsq synthesize --model {model_name} --out FILE` first")
    fingerprint = meta.get("model_fingerprint")
    if fingerprint is not None:
        from zsq_engine.synth import api as synth_api

        mine = getattr(synth_api, "_model_fingerprint", None)
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
    from zsq_engine.evaluation import evaluate_accuracy
    from zsq_engine.models import get_model
    from zsq_engine.quant import check_bits
    from zsq_engine.recon import PRESETS, reconstruct_model, save_quantized

    from .data_sources import fmnist_batches

    check_bits(args.wbits, "--wbits")
    check_bits(args.abits, "--abits")
    device = common.resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = get_model(args.model, pretrained=True)
    num = args.num or PRESETS[args.preset]["num"]
    images = load_calibration_data(args.data, args.model, model, num, args.data_dir, args.seed)
    t0 = time.perf_counter()
    model, extra = synth_free_args.maybe_equalize(args, model)
    layer_bits, plan_meta = synth_free_args.maybe_plan_bits(args, model, images)
    result = reconstruct_model(model, images, args.wbits, args.abits, method=args.method, preset=args.preset,
                               iters=args.iters, num=num, seed=args.seed, device=device,
                               show_progress=not args.no_progress, layer_bits=layer_bits)
    seconds = time.perf_counter() - t0
    meta = {"model": args.model, "data": args.data, **result.meta, "units_report": result.units, **extra,
            **plan_meta}
    acc = None
    if args.model == "fmnist_resnet":
        test = fmnist_batches("test", args.batch_size, args.data_dir)
        if args.eval_limit:
            test = [b for b in test][: -(-args.eval_limit // args.batch_size)]
        acc = evaluate_accuracy(result.model, test, device, desc="test", show_progress=not args.no_progress)
        meta["accuracy"] = acc
    save_quantized(args.out, result.model, meta)
    bits = f"W{args.wbits}A{args.abits}"
    print(f"zsq quantize: {args.model} {bits} {args.method} (preset {args.preset}, {result.meta['num_samples']} "
          f"{'real' if args.data == 'real' else 'synthetic'} images) in {seconds:.1f} s -> {args.out}")
    for u in result.units:
        print(f"  {u['name']:12s} {u['type']:12s} loss {u['mse_before']:.4g} -> {u['mse_after']:.4g} "
              f"({u['seconds']:.1f} s)")
    if acc is not None:
        print(f"test accuracy: {acc:.2f} %")
    else:
        print("(no built-in test set for this model: evaluate the saved file with your own data)")
    return 0
