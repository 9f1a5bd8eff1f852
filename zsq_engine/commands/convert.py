"""``zsq convert``: a fake-quant model -> an integer model file (real int8 / packed int4 weights).

Also the place ``zsq bench`` gets its models from (:func:`source_models`).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

import torch

from . import common, eval_data, guard

_EPILOG = """where the fake-quant model comes from:
  --checkpoint Q.pt   a model saved by `zsq quantize` or `zsq qat` (Genie / BRECQ / QDrop / GDFQ /
                      ZAQ / HAST); its model name and bits are read from the file, so --model,
                      --weights, --wbits, --abits, --first-last-bits, --calib-* are refused with it
  --model NAME        naive post-training quantization here at --wbits / --abits: per-channel
                      weights (Lp scale search), per-tensor activation ranges from --calib-images
                      images: real Fashion-MNIST training images for fmnist_resnet, an ImageFolder
                      (--calib-dir) for the ImageNet models, else random images (fine for latency,
                      meaningless for accuracy; a warning says so)
the file (zsq_engine.runtime.save / load, torch.load(weights_only=True)) holds the integer
weights, scales, zero points, the program and the format version; it loads without the float
model. --check measures the agreement with the fake-quant model on the Fashion-MNIST test set
(fmnist_resnet) or on --val-dir. A layer the integer runtime does not support is named, the
fake-quant accuracy is still reported with --check, and no file is written (exit status 1).
--out is never replaced without --overwrite, and never when it names the --checkpoint / --weights file.
examples:
  zsq convert --model fmnist_resnet --wbits 4 --abits 4 --out int.pt --check
  zsq quantize --data real --out q.pt && zsq convert --checkpoint q.pt --out int.pt --check"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a fake-quant model into an integer model file",
        description="Lower a fake-quant model (from `zsq quantize`, `zsq qat` or naive PTQ done here) to an "
                    "integer model: int8 / packed int4 weights, BN folded, requantization, residual adds and "
                    "ReLU fused into the integer kernels; save it, and optionally check it against the "
                    "fake-quant model.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(p)
    p.add_argument("--out", required=True, help="output file for the integer model (.pt)")
    common.add_overwrite_arg(p, "--out")
    p.add_argument("--check", action="store_true",
                   help="compare with the fake-quant model on the Fashion-MNIST test set (fmnist_resnet) or on "
                        "--val-dir: top-1 agreement, both accuracies, largest logit difference")
    eval_data.add_val_args(p)
    eval_data.add_input_size_arg(p)
    p.add_argument("--check-limit", type=common.positive_int, default=None,
                   help="--check on the first N test / --val-dir images only (default: all)")
    common.add_device_args(p)
    common.add_data_args(p)
    p.set_defaults(run=run)


def add_source_args(p: argparse.ArgumentParser) -> None:
    """The arguments naming the fake-quant model (shared with ``zsq bench``)."""
    p.add_argument("--checkpoint", default=None, help="fake-quant model file from `zsq quantize` / `zsq qat`")
    p.add_argument("--model", default=None,
                   help="registered model name (`zsq info` lists them) or package.module:factory for naive PTQ "
                        "here (default fmnist_resnet when no --checkpoint)")
    p.add_argument("--weights", default=None,
                   help="float state-dict file for --model (default: fmnist_resnet's committed weights; random "
                        "initialisation for the other models)")
    # defaults are filled in by check_source_args, so that flags a --checkpoint would ignore are refused
    p.add_argument("--wbits", type=int, default=None, help="naive PTQ weight bits of the inner layers, 2..8 (default 8)")
    p.add_argument("--abits", type=int, default=None,
                   help="naive PTQ activation bits of the inner layers, 2..8 (default 8)")
    p.add_argument("--first-last-bits", type=int, default=None,
                   help="naive PTQ bits of the first / last layer (default 8)")
    p.add_argument("--calib-images", type=common.positive_int, default=None,
                   help=f"images calibrating the naive PTQ activation ranges (default {_CALIB_DEFAULT})")
    p.add_argument("--calib-dir", default=None, help="ImageFolder of calibration images for the ImageNet models")
    eval_data.add_model_args(p, weights=False, input_size=False)


_CALIB_DEFAULT = 256
_NAIVE_ONLY = ("wbits", "abits", "first_last_bits")


def check_source_args(args, calib_with_checkpoint: bool = False) -> None:
    """Check the source arguments before any work and fill in their defaults. With
    ``--checkpoint`` the flags of naive PTQ would be ignored, so they are refused
    (``--calib-*`` too unless ``calib_with_checkpoint``: bench calibrates torch.ao with them)."""
    if args.checkpoint:
        given = [n for n in ("model", "weights", *_NAIVE_ONLY) if getattr(args, n) is not None]
        if not calib_with_checkpoint:
            given += [n for n in ("calib_images", "calib_dir") if getattr(args, n) is not None]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise guard.UsageError("--checkpoint already names its model and bits", flags,
                                   "these flags would be ignored", f"drop {flags}")
        guard.input_file(args.checkpoint, "--checkpoint")
    else:
        if args.model is not None:
            guard.check_model(args.model)
        for name, flag in zip(_NAIVE_ONLY, ("--wbits", "--abits", "--first-last-bits")):
            if getattr(args, name) is None:
                setattr(args, name, 8)
            guard.check_bits(getattr(args, name), flag)
        if args.weights is not None:
            guard.input_file(args.weights, "--weights")
    if args.calib_images is None:
        args.calib_images = _CALIB_DEFAULT
    guard.image_folders(("--calib-dir", args.calib_dir))


def _calibration(name: str, num: int, args) -> list:
    """Calibration batches of float images for ``name``; random ones (with a warning) when no
    real images are available."""
    from ..data.sources import fmnist_calibration, imagefolder_batches

    if name == "fmnist_resnet" and not getattr(args, "input_size", None):
        return [x for x, _ in fmnist_calibration(num, args.data_dir, args.seed)]
    info = eval_data.model_info(args, name)
    if args.calib_dir:
        return [x for x, _ in imagefolder_batches(args.calib_dir, name, 64, num, info=info)]
    print(f"warning: no --calib-dir for {name}: calibrating on {num} random images, so the quantized model is "
          "fine for latency and meaningless for accuracy", file=sys.stderr)
    g = torch.Generator().manual_seed(args.seed)
    shape = info.input_shape
    return [torch.randn(min(64, num - i), *shape, generator=g) for i in range(0, num, 64)]


def source_models(args, need_calib: bool = False):
    """``(name, fp_model, fake_quant_model, meta, calib_batches)`` from ``--checkpoint`` or
    ``--model`` + naive PTQ. ``calib_batches`` (float image tensors) is filled when naive PTQ
    ran or ``need_calib`` (torch.ao needs them). Raises ValueError / FileNotFoundError."""
    from zsq_engine.models import get_model
    from zsq_engine.quant import check_bits, naive_ptq
    from zsq_engine.recon import load_quantized

    calib = None
    if args.checkpoint:
        qmodel, meta = guard.load_input(args.checkpoint, "--checkpoint", load_quantized)
        name = meta["model"]
        fp_model = get_model(name, pretrained=name == "fmnist_resnet")
        meta = {"source": str(args.checkpoint), "model": name, "wbits": meta.get("wbits"),
                "abits": meta.get("abits"), "method": meta.get("method"),
                "fake_quant_accuracy": meta.get("accuracy")}
        if need_calib:
            calib = _calibration(name, args.calib_images, args)
    else:
        name = args.model or "fmnist_resnet"
        check_bits(args.wbits, "--wbits")
        check_bits(args.abits, "--abits")
        check_bits(args.first_last_bits, "--first-last-bits")
        fp_model = load_float_model(name, args.weights)
        calib = _calibration(name, args.calib_images, args)
        qmodel = naive_ptq(fp_model, calib, args.wbits, args.abits, first_last_bits=args.first_last_bits,
                           progress=False)
        meta = {"source": "naive PTQ", "model": name, "wbits": args.wbits, "abits": args.abits,
                "first_last_bits": args.first_last_bits, "calib_images": args.calib_images,
                "weights": args.weights or ("committed" if name == "fmnist_resnet" else "random")}
    return name, fp_model.eval(), qmodel.eval(), meta, calib


def load_float_model(name: str, weights: Optional[str]):
    """``get_model`` with the --weights file read safely and a mismatch reported in one line."""
    from zsq_engine.utils import load_torch_file
    from zsq_engine.models import get_model

    if weights is None:
        return get_model(name, pretrained=name == "fmnist_resnet")
    guard.load_input(weights, "--weights", load_torch_file, "state-dict file", "pass a file of torch.save(state_dict)")
    try:
        return get_model(name, weights_path=weights)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        detail = _mismatch_summary(str(exc)) or type(exc).__name__
        raise guard.CommandError("cannot use --weights", weights, f"they do not fit {name} ({detail})",
                                 f"pass a state dict of {name}") from None


def _mismatch_summary(report: str, limit: int = 400) -> str:
    """A multi-line state-dict mismatch report (its first line names the file) as one line:
    groups ('2 keys missing from the file: a, b') separated by '; '."""
    lines = [ln.strip() for ln in report.splitlines() if ln.strip()]
    groups = []
    for ln in lines[1:] if len(lines) > 1 else lines:
        if ln.endswith(":") or not groups:
            groups.append([ln])
        else:
            groups[-1].append(ln)
    text = "; ".join(g[0] + (" " + ", ".join(g[1:]) if len(g) > 1 else "") for g in groups)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_check(name: str) -> None:
    raise guard.UsageError("--check needs evaluation images", f"--model {name}",
                           "only fmnist_resnet has a built-in test set",
                           "pass --val-dir (an ImageFolder of validation images) or drop --check")


def run(args: argparse.Namespace) -> int:
    from zsq_engine.runtime import convert, save
    from zsq_engine.runtime.agreement import agreement
    from zsq_engine.runtime.graph import UnsupportedLayerError

    check_source_args(args)
    guard.image_folders(("--val-dir", args.val_dir))
    if args.check and not args.val_dir and not args.checkpoint and (args.model or "fmnist_resnet") != "fmnist_resnet":
        _no_check(args.model)  # before spending time on the quantization
    out = guard.output_file(args.out, "--out", overwrite=args.overwrite, inputs=[args.checkpoint, args.weights])
    device = common.resolve_device(args.device)
    guard.check_backend_env(device)
    if (args.check and not args.val_dir) or (not args.checkpoint and (args.model or "fmnist_resnet") == "fmnist_resnet"):
        from .quantize import check_eval_data

        check_eval_data("fmnist_resnet", args.data_dir, need_train=not args.checkpoint)
    torch.manual_seed(args.seed)
    name, _, qmodel, meta, _ = source_models(args)
    test = where = None
    if args.check:  # the checkpoint's model is known once it is read: still before the conversion
        test, where = eval_data.val_batches(args, eval_data.model_info(args, name), args.check_limit)
        if test is None:
            _no_check(name)
    t0 = time.perf_counter()
    try:
        int_model = convert(qmodel)
    except UnsupportedLayerError as exc:
        # the fake-quant model is still usable: report it rather than only failing
        print(f"error: the integer runtime cannot convert {name}: {exc}", file=sys.stderr)
        if test is not None:
            acc = eval_data.accuracy(qmodel.to(device), test, device, desc="fake-quant",
                                     show_progress=not args.no_progress)
            print(f"fake-quant model (W{meta['wbits']}A{meta['abits']}) on {where}: {eval_data.format_accuracy(acc)}")
        print(f"no integer model written to {args.out}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    packed = sum(m.config["packed"] for m in int_model.layers.values())
    print(f"zsq convert: {name} ({meta['source']}, W{meta['wbits']}A{meta['abits']}) -> {len(int_model.layers)} integer "
          f"layers ({packed} with packed int4 weights), {len(int_model.program)} program steps in {seconds:.1f} s")
    if args.check:
        r = agreement(qmodel.to(device), int_model.to(device), test, device, show_progress=not args.no_progress)
        int_model.cpu()
        meta["check"] = r
        print(f"check on {r['images']} images of {where}: top-1 agreement {r['agreement']:.2f} %, accuracy fake-quant "
              f"{r['fq_accuracy']:.2f} % / integer {r['int_accuracy']:.2f} % ({r['accuracy_delta']:+.2f}), "
              f"largest logit difference {r['max_logit_diff']:.3g} (mean {r['mean_abs_logit_diff']:.2g})")
    with guard.writing(out):
        save(int_model, out, meta=meta)
    print(f"integer model written to {out} (load with zsq_engine.runtime.load)")
    return 0
