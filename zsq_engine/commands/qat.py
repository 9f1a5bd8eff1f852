"""``zsq qat``: generator-based zero-shot quantization-aware training (GDFQ, ZAQ, HAST)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import common, synth_free_args

_EPILOG = """methods:
  gdfq   conditional generator (teacher CE + BN statistics) trained alongside the student;
         student: KL distillation at temperature T + CE on the generator's labels
  zaq    unconditional generator and student in an adversarial game on the two-level
         (logits L1 + stage-feature relation) discrepancy; 5 student steps per generator step
  hast   hard synthetic samples (zsq synthesize --method hast, made here unless --pool is given);
         KL distillation + channel-attention feature alignment, on x and on the promoted
         x + eps * sign(grad_x L)
presets (epochs x iterations per epoch, batch):
{presets}
The run writes a checkpoint after the preparation (warm-up, calibration) and after every epoch
(default <out>.ckpt); --resume continues it with identical results. The final model is saved in
the format of `zsq quantize` (load with zsq_engine.recon.load_quantized).
example:
  zsq qat --method hast --model fmnist_resnet --wbits 4 --abits 4 --preset fast --out q.pt"""


def add_parser(subparsers) -> None:
    from zsq_engine.qat import METHODS, PRESET_NAMES, preset_table

    p = subparsers.add_parser(
        "qat", help="zero-shot QAT with a generator or hard samples (GDFQ, ZAQ, HAST)",
        description="Quantization-aware training of a pretrained model on synthetic data only: the "
                    "quantized student learns from the frozen float teacher on generated or hard synthetic "
                    "batches. Prints the naive-quantized start and the final test accuracy (Fashion-MNIST).",
        epilog=_EPILOG.format(presets=preset_table()), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=METHODS, help="QAT method (see below)")
    p.add_argument("--model", default="fmnist_resnet", help="registered model name (default fmnist_resnet)")
    p.add_argument("--wbits", type=int, default=4, help="weight bits of the inner layers, 2..8 (default 4)")
    p.add_argument("--abits", type=int, default=4, help="activation bits of the inner layers, 2..8 (default 4)")
    p.add_argument("--preset", default="fast", choices=PRESET_NAMES, help="settings, see below (default fast)")
    p.add_argument("--epochs", type=common.positive_int, default=None, help="QAT epochs (overrides the preset)")
    p.add_argument("--iters-per-epoch", type=common.positive_int, default=None,
                   help="student steps per epoch (overrides the preset)")
    p.add_argument("--train-batch-size", type=common.positive_int, default=None,
                   help="synthetic images per step (overrides the preset)")
    p.add_argument("--lr", type=float, default=None, help="student weight learning rate (overrides the preset)")
    p.add_argument("--pool", default=None,
                   help="hast: hard samples from `zsq synthesize --method hast --out FILE` (default: synthesise "
                        "the preset's pool here)")
    p.add_argument("--out", required=True, help="output file for the quantized model (.pt)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default <out>.ckpt)")
    p.add_argument("--resume", action="store_true", help="continue the run in --checkpoint")
    p.add_argument("--eval-limit", type=common.positive_int, default=None,
                   help="evaluate on the first N test images only (default: all 10000)")
    p.add_argument("--no-start-eval", action="store_true",
                   help="skip measuring the naive-quantized starting accuracy")
    synth_free_args.add_equalize_arg(p)
    common.add_device_args(p)
    common.add_data_args(p)
    p.set_defaults(run=run)


def _load_pool(path: str, model_name: str, model):
    from .quantize import load_calibration_data
    from zsq_engine.synth.io import load_output

    images = load_calibration_data(path, model_name, model, 10 ** 9, None, 0)  # checks model, weights, shape
    labels = load_output(Path(path))["labels"]
    if labels is None:
        raise ValueError(f"--pool {path} holds no labels; HAST needs labelled hard samples "
                         "(zsq synthesize --method hast)")
    return images, labels[: images.shape[0]]


def run(args: argparse.Namespace) -> int:
    from zsq_engine.evaluation import evaluate_accuracy
    from zsq_engine.models import get_model, get_model_info
    from zsq_engine.qat import train_qat
    from zsq_engine.quant import check_bits
    from zsq_engine.recon import save_quantized

    from .data_sources import fmnist_batches

    check_bits(args.wbits, "--wbits")
    check_bits(args.abits, "--abits")
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.pool is not None and args.method != "hast":
        raise ValueError(f"--pool is only used by --method hast, not {args.method}")
    device = common.resolve_device(args.device)
    out = Path(args.out)
    checkpoint = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".ckpt")
    if checkpoint.exists() and not args.resume:
        raise ValueError(f"checkpoint {checkpoint} exists: pass --resume to continue that run, or delete it "
                         "to start over")
    info = get_model_info(args.model)
    model = get_model(args.model, pretrained=True)
    pool = _load_pool(args.pool, args.model, model) if args.pool else None
    model, extra = synth_free_args.maybe_equalize(args, model)
    show = not args.no_progress

    test = None
    if args.model == "fmnist_resnet":
        test = fmnist_batches("test", args.batch_size, args.data_dir)
        if args.eval_limit:
            test = [b for b in test][: -(-args.eval_limit // args.batch_size)]

    def on_prepared(trainer) -> None:
        if test is not None and not args.no_start_eval:
            trainer.notes["start_accuracy"] = evaluate_accuracy(trainer.student, test, device, desc="start eval",
                                                                show_progress=show)
            print(f"naive-quantized start (ranges calibrated on synthetic data): "
                  f"{trainer.notes['start_accuracy']:.2f} %", flush=True)

    def on_epoch_end(row: dict) -> None:
        gen = f", generator loss {row['generator_loss']:.4g}" if row["generator_loss"] is not None else ""
        print(f"  epoch {row['epoch']}: student loss {row['student_loss']:.4g}{gen} ({row['seconds']:.1f} s)",
              flush=True)

    t0 = time.perf_counter()
    result = train_qat(model, args.method, args.wbits, args.abits, input_shape=info.input_shape,
                       num_classes=info.num_classes, preset=args.preset, seed=args.seed, device=device,
                       checkpoint=checkpoint, resume=args.resume, pool=pool, show_progress=show,
                       on_epoch_end=on_epoch_end, on_prepared=on_prepared, epochs=args.epochs,
                       iters_per_epoch=args.iters_per_epoch, batch_size=args.train_batch_size, lr=args.lr)
    seconds = time.perf_counter() - t0
    meta = {"model": args.model, **result.meta, "history": result.history, **extra}
    acc = None
    if test is not None:
        acc = evaluate_accuracy(result.student, test, device, desc="test", show_progress=show)
        meta["accuracy"] = acc
    save_quantized(out, result.student, meta)
    print(f"zsq qat: {args.model} W{args.wbits}A{args.abits} {args.method} (preset {args.preset}, "
          f"{result.meta['epochs']} epochs, seed {args.seed}) in {seconds:.1f} s -> {out}")
    start = result.meta["notes"].get("start_accuracy")
    if acc is not None:
        line = f"test accuracy: {acc:.2f} %"
        if start is not None:
            line += f" (naive-quantized start {start:.2f} %, {acc - start:+.2f})"
        print(line)
    else:
        print("(no built-in test set for this model: evaluate the saved file with your own data)")
    return 0
