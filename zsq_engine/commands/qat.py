"""``zsq qat``: generator-based zero-shot quantization-aware training (GDFQ, ZAQ, HAST)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import common, eval_data, guard, synth_free_args

_EPILOG = """methods:
  gdfq   conditional generator (teacher CE + BN statistics) trained alongside the student;
         student: KL distillation at temperature T + CE on the generator's labels
  zaq    unconditional generator and student in an adversarial game on the two-level
         (logits L1 + stage-feature relation) discrepancy; 5 student steps per generator step
  hast   hard synthetic samples (zsq synthesize --method hast, made here unless --pool is given);
         KL distillation + channel-attention feature alignment, on x and on the promoted
         x + eps * sign(grad_x L)
presets (epochs x iterations per epoch, batch; fast is the default, paper the published settings):
{presets}
Preparation comes first: the HAST pool (unless --pool), the generator warm-up (gdfq, and hast's
calibration generator: 200 steps in the fast preset, 2-8 minutes on 2 CPU cores; --warmup-steps
changes it) and the activation calibration; each phase prints one line, also with --no-progress.
The run writes a checkpoint after the preparation and after every epoch (default <out>.ckpt);
--resume continues it with identical results (it says from which epoch) and needs that checkpoint.
The final model is saved in the format of `zsq quantize` (load with zsq_engine.recon.load_quantized);
--out is never replaced without --overwrite.
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
    p.add_argument("--model", default="fmnist_resnet",
                   help="registered model name (`zsq info` lists them) or package.module:factory "
                        "(default fmnist_resnet)")
    eval_data.add_model_args(p)
    eval_data.add_val_args(p)
    p.add_argument("--wbits", type=int, default=4, help="weight bits of the inner layers, 2..8 (default 4)")
    p.add_argument("--abits", type=int, default=4, help="activation bits of the inner layers, 2..8 (default 4)")
    p.add_argument("--preset", default=common.DEFAULT_PRESET, choices=PRESET_NAMES, help=common.PRESET_HELP)
    p.add_argument("--epochs", type=common.positive_int, default=None, help="QAT epochs (overrides the preset)")
    p.add_argument("--iters-per-epoch", type=common.positive_int, default=None,
                   help="student steps per epoch (overrides the preset)")
    p.add_argument("--train-batch-size", type=common.positive_int, default=None,
                   help="synthetic images per step (overrides the preset)")
    p.add_argument("--lr", type=float, default=None, help="student weight learning rate (overrides the preset)")
    p.add_argument("--warmup-steps", type=int, default=None, metavar="N",
                   help="generator warm-up steps before calibration (gdfq; hast's calibration generator); "
                        "0 skips it (default: the preset's, 200 in fast)")
    p.add_argument("--pool", default=None,
                   help="hast: hard samples from `zsq synthesize --method hast --out FILE` (default: synthesise "
                        "the preset's pool here)")
    p.add_argument("--out", required=True, help="output file for the quantized model (.pt)")
    common.add_overwrite_arg(p, "--out")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default <out>.ckpt)")
    p.add_argument("--resume", action="store_true", help="continue the run in --checkpoint (which must exist)")
    p.add_argument("--eval-limit", type=common.positive_int, default=None,
                   help="evaluate on the first N test / --val-dir images only (default: all)")
    p.add_argument("--no-start-eval", action="store_true",
                   help="skip measuring the naive-quantized starting accuracy")
    synth_free_args.add_equalize_arg(p)
    synth_free_args.add_bits_budget_arg(p)
    p.add_argument("--plan-data", default=None, metavar="FILE.pt",
                   help="synthetic images (from `zsq synthesize` for this model) on which --bits-budget ranks the "
                        "layers (default: the --pool images)")
    common.add_device_args(p)
    common.add_data_args(p)
    p.set_defaults(run=run)


def _load_pool(path: str, model_name: str, model, info=None):
    from .quantize import load_calibration_data, read_data_file

    obj = read_data_file(path, "--pool")
    images = load_calibration_data(path, model_name, model, 10 ** 9, None, 0, arg="--pool", preloaded=obj,
                                   info=info)
    labels = obj["labels"]
    if labels is None:
        raise guard.CommandError("cannot use --pool", path, "it holds no labels; HAST needs labelled hard samples",
                                 "make it with `zsq synthesize --method hast`")
    return images, labels[: images.shape[0]]


def _check_args(args) -> Path:
    """Everything checkable before the preparation; returns the checkpoint path."""
    guard.check_model(args.model)
    guard.check_bits(args.wbits, "--wbits")
    guard.check_bits(args.abits, "--abits")
    guard.check_positive(args, "batch_size")
    guard.check_positive(args, "warmup_steps", minimum=0)
    if args.lr is not None and not args.lr > 0:
        raise guard.bad_value("--lr", args.lr, "must be > 0", "e.g. --lr 1e-5")
    if args.bits_budget is not None and not args.bits_budget > 0:
        raise guard.bad_value("--bits-budget", args.bits_budget, "must be a positive number of bits", "e.g. --bits-budget 4.5")
    if args.pool is not None and args.method != "hast":
        raise guard.UsageError("--pool is only used by --method hast", f"--method {args.method}",
                               "it would be ignored", "drop --pool")
    if not str(args.out).strip():
        raise guard.bad_value("--out", repr(args.out), "needs a file name", "e.g. --out q.pt")
    out = Path(args.out)
    if out.is_dir() or not out.name:
        guard.output_file(out, "--out")  # says it is a folder
    checkpoint = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".ckpt")
    # the checkpoint first: an earlier run's checkpoint says more about what to do than its output
    if args.resume:
        guard.input_file(checkpoint, "--checkpoint (--resume)")
    elif checkpoint.exists():
        raise guard.UsageError("the checkpoint of an earlier run exists", str(checkpoint),
                               "starting over would replace it", "pass --resume to continue that run, or delete it "
                               "(or choose another --checkpoint) to start over")
    guard.output_file(out, "--out", overwrite=args.overwrite, inputs=[args.pool, args.checkpoint])
    guard.output_file(checkpoint, "--checkpoint", overwrite=True, inputs=[args.pool, args.out])
    return checkpoint


def _say_resume(checkpoint: Path, epochs: int) -> None:
    from zsq_engine.qat.checkpoint import load_checkpoint

    ckpt = guard.load_input(checkpoint, "--checkpoint", load_checkpoint)
    done = int(ckpt["epoch"])
    if not ckpt["prepared"]:
        print(f"resuming {checkpoint}: the preparation had not finished; starting it again", flush=True)
    elif done >= epochs:
        print(f"resuming {checkpoint}: all {done} epochs are done; evaluating and saving", flush=True)
    else:
        print(f"resuming {checkpoint} after epoch {done} of {epochs}: continuing with epoch {done + 1}", flush=True)


def _preparation_line(args, epochs_cfg) -> str:
    steps = epochs_cfg.gen_warmup_iters
    parts = []
    if args.method == "hast" and args.pool is None:
        parts.append(f"hard-sample pool ({epochs_cfg.pool_size} images, {epochs_cfg.pool_iters} iterations per batch)")
    if args.method == "gdfq" and steps:
        parts.append(f"generator warm-up ({steps} steps)")
    if args.method == "hast" and epochs_cfg.calib_source == "gdfq" and steps:
        parts.append(f"calibration generator ({steps} steps)")
    parts.append(f"activation calibration ({epochs_cfg.calib_batches} batches)")
    if args.method == "zaq" and steps:
        parts.append(f"generator warm-up ({steps} steps)")
    return "preparing: " + ", then ".join(parts)


def _plan_bits(args, model, info, pool):
    """``(layer_bits or None, meta)`` of ``--bits-budget``, ranked on ``--plan-data`` or the pool."""
    if args.bits_budget is None:
        if args.plan_data is not None:
            raise guard.UsageError("--plan-data without --bits-budget", f"--plan-data {args.plan_data}",
                                   "it only feeds the per-layer bit allocation", "add --bits-budget B, or drop it")
        return None, {}
    if args.plan_data is not None:
        from .quantize import load_calibration_data, read_data_file

        obj = read_data_file(args.plan_data, "--plan-data")
        images = load_calibration_data(args.plan_data, args.model, model, 256, None, args.seed, arg="--plan-data",
                                       preloaded=obj, info=info)
    elif pool is not None:
        images = pool[0][:256]
    else:
        raise guard.UsageError("--bits-budget needs images to rank the layers", f"--bits-budget {args.bits_budget}",
                               "QAT has no calibration images of its own",
                               "pass --plan-data FILE.pt from `zsq synthesize` (or --pool with --method hast)")
    return synth_free_args.maybe_plan_bits(args, model, images)


def run(args: argparse.Namespace) -> int:
    from zsq_engine.qat import make_config, train_qat
    from zsq_engine.recon import save_quantized

    from .quantize import check_eval_data

    checkpoint = _check_args(args)
    out = Path(args.out)
    device = common.resolve_device(args.device)
    guard.check_backend_env(device)
    guard.image_folders(("--val-dir", args.val_dir))
    if not args.val_dir:
        check_eval_data(args.model, args.data_dir)
    overrides = {"epochs": args.epochs, "iters_per_epoch": args.iters_per_epoch, "batch_size": args.train_batch_size,
                 "lr": args.lr, "gen_warmup_iters": args.warmup_steps}
    try:
        cfg = make_config(args.method, args.preset, **overrides)
    except ValueError as exc:
        raise guard.UsageError("invalid QAT settings", None, str(exc), "see `zsq qat --help`") from None
    if args.resume:
        _say_resume(checkpoint, cfg.epochs)
    model, info = eval_data.load_model(args)
    pool = _load_pool(args.pool, args.model, model, info) if args.pool else None
    model, extra = synth_free_args.maybe_equalize(args, model)
    layer_bits, plan_meta = _plan_bits(args, model, info, pool)
    extra.update(plan_meta)
    show = not args.no_progress
    test, no_test = eval_data.val_batches(args, info, args.eval_limit)

    t0 = time.perf_counter()
    if not args.resume:
        print(_preparation_line(args, cfg), flush=True)

    def on_prepared(trainer) -> None:
        print(f"prepared in {trainer.prepare_seconds:.1f} s", flush=True)
        if test is not None and not args.no_start_eval:
            trainer.notes["start_accuracy"] = eval_data.accuracy(trainer.student, test, device, desc="start eval",
                                                                 show_progress=show)["top1"]
            print(f"naive-quantized start (ranges calibrated on synthetic data): "
                  f"{trainer.notes['start_accuracy']:.2f} %", flush=True)

    def on_epoch_end(row: dict) -> None:
        gen = f", generator loss {row['generator_loss']:.4g}" if row["generator_loss"] is not None else ""
        print(f"  epoch {row['epoch']}/{cfg.epochs}: student loss {row['student_loss']:.4g}{gen} "
              f"({row['seconds']:.1f} s)", flush=True)

    with guard.writing(checkpoint, "--checkpoint"):
        result = train_qat(model, args.method, args.wbits, args.abits, input_shape=info.input_shape,
                           num_classes=info.num_classes, preset=args.preset, seed=args.seed, device=device,
                           checkpoint=checkpoint, resume=args.resume, pool=pool, show_progress=show,
                           on_epoch_end=on_epoch_end, on_prepared=on_prepared, layer_bits=layer_bits, **overrides)
    seconds = time.perf_counter() - t0
    meta = {"model": args.model, **result.meta, "history": result.history, **extra}
    acc = None
    if test is not None:
        print(f"evaluating on {no_test}", flush=True)
        acc5 = eval_data.accuracy(result.student, test, device, desc="test", show_progress=show)
        acc = meta["accuracy"] = acc5["top1"]
        meta["top5"] = acc5["top5"]
    with guard.writing(out):
        save_quantized(out, result.student, meta)
    print(f"zsq qat: {args.model} W{args.wbits}A{args.abits} {args.method} (preset {args.preset}, "
          f"{result.meta['epochs']} epochs, seed {args.seed}) in {seconds:.1f} s -> {out}")
    start = result.meta["notes"].get("start_accuracy")
    if acc is not None:
        line = f"test accuracy: {acc:.2f} % (top-5 {acc5['top5']:.2f} %)"
        if start is not None:
            line += f" (naive-quantized start {start:.2f} %, {acc - start:+.2f})"
        print(line)
    else:
        print(f"({no_test})")
    return 0
