"""``zsq synthesize``: zero-shot calibration data from a model's BatchNorm statistics."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import common, eval_data, guard

_EPILOG = """presets:
  paper  the published defaults: zeroq 500 iters x 64 images/batch (Adam lr 0.5); genie 4000 iters x 128
         (fresh generator + latents per batch, swing conv); gdfq 4000 generator steps (batch 64), then
         batches of 128 sampled; hast 1000 iters x 256 (hard samples, crop/flip); 1024 images by default.
  fast   (default) short runs for small models on a CPU: 128 images in batches of 64, 60 iterations
         (genie 50; gdfq 80 generator steps of 32); about 20-40 s per method for Fashion-MNIST on 2
         shared cores with OMP_NUM_THREADS=1 (faster than 2 threads on a busy machine).
--num/--batch-size/--iters override the preset. With --out the run is resumable: finished batches are
kept in <out>.parts/ and a rerun with the same settings continues where it stopped (it says at which
batch); a finished <out> with the same settings is reused as it is (it says so), other settings are
refused unless --overwrite. Under
`torchrun --nproc_per_node N -m zsq_engine.cli synthesize ...` batches are shared between processes
and the merged file equals the single-process one (there, spell --num as --num-images or -n)."""


def add_parser(subparsers) -> None:
    from zsq_engine.synth.api import METHODS, PRESETS

    p = subparsers.add_parser(
        "synthesize", help="synthesize calibration images from a model's BN statistics (no real data)",
        description="Synthesize images for a pretrained model from the running statistics of its BatchNorm "
                    "layers (ZeroQ, Genie-D, GDFQ generator, HAST) and save them with torch.save as "
                    "{images, labels, meta}; images are in the model's normalised input space.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fmnist_resnet",
                   help="registered model name (`zsq info` lists them) or package.module:factory "
                        "(default fmnist_resnet)")
    eval_data.add_model_args(p)
    p.add_argument("--method", default="genie",
                   help=f"synthesis method: {', '.join(METHODS)} (default genie)")
    p.add_argument("--num", "--num-images", "-n", dest="num", type=int, default=None,
                   help="number of images (default: the preset's); under torchrun write --num-images or -n, "
                        "since torchrun reads --num as an abbreviation of its own --numa-binding")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch, each batch optimised on its own (default: the preset's)")
    p.add_argument("--iters", type=int, default=None,
                   help="optimisation steps per batch; for gdfq, generator training steps (default: the preset's)")
    p.add_argument("--preset", default=common.DEFAULT_PRESET, choices=sorted(PRESETS), help=common.PRESET_HELP)
    p.add_argument("--out", required=True, help="output file (.pt); <out>.parts/ holds the batches of an "
                                                "unfinished run")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (or unfinished run, or --preview) made with other settings")
    p.add_argument("--preview", default=None, metavar="PNG",
                   help="also write a PNG grid of up to 64 samples (needs matplotlib)")
    common.add_device_args(p)
    p.set_defaults(run=run)


def _check_args(args) -> None:
    """Everything that can be checked before the synthesis starts (arguments, output locations)."""
    from zsq_engine.synth.api import METHODS

    if args.method not in METHODS:
        raise guard.UsageError("unknown method", f"--method {args.method}", f"valid methods: {', '.join(METHODS)}",
                               "see `zsq synthesize --help`")
    guard.check_model(args.model)
    guard.check_positive(args, "num", "iters")
    guard.check_positive(args, "batch_size", minimum=2)  # batch statistics need two images
    guard.output_file(args.out, "--out", overwrite=True)  # an existing --out is reused or refused below
    if args.preview is not None:
        if Path(args.preview).suffix.lower() != ".png":
            raise guard.bad_value("--preview", args.preview, "must name a .png file", "e.g. --preview samples.png")
        guard.output_file(args.preview, "--preview", overwrite=args.overwrite, inputs=[args.out])
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise guard.CommandError("cannot draw --preview", args.preview, "matplotlib is not installed",
                                     "pip install matplotlib, or drop --preview") from None


def _say_resume(args) -> None:
    """Say what a rerun will do with what an earlier run left (before any work)."""
    from zsq_engine.synth.api import PRESETS, resolve_settings
    from zsq_engine.synth.io import PartStore, load_output

    out = Path(args.out)
    if args.overwrite:
        return
    if out.exists():
        guard.load_input(out, "--out", load_output)  # a damaged file: one line, before any work
        print(f"{out} exists: reusing it if it was made with these settings (--overwrite to redo it)", flush=True)
        return
    store = PartStore(out)
    stored = guard.load_input(store.manifest, "--out's .parts folder", lambda p: store.stored_identity())
    if stored is None:
        return
    p = PRESETS[args.preset][args.method]
    num = args.num or p["num"]
    batch_size = args.batch_size or p["batch_size"]
    total = -(-num // batch_size)
    done = store.done_batches()
    wanted = json.loads(json.dumps({"method": args.method, "preset": args.preset, "seed": args.seed, "num": num,
                                    "batch_size": batch_size, "model": args.model,
                                    "settings": resolve_settings(args.method, args.preset, args.iters)}))
    if all(stored.get(k) == v for k, v in wanted.items()):  # else synthesize() refuses, naming the differences
        first = next((b for b in range(total) if not store.has_batch(b)), total - 1)
        print(f"resuming the unfinished run in {store.dir}: {done} of {total} batches done, continuing at batch "
              f"{first + 1} of {total}", flush=True)


def write_preview(images, labels, mean, std, path: Path, max_images: int = 64) -> None:
    """Save a grid of (de-normalised, clipped to [0, 1]) images as PNG, with labels as titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    n = min(max_images, images.shape[0])
    cols = min(8, n)
    rows = -(-n // cols)
    c = images.shape[1]
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    shown = (images[:n].float() * s + m).clamp(0, 1)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.2), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = shown[i].permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
        if labels is not None:
            ax.set_title(str(int(labels[i])), fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from zsq_engine.utils import save_figure_atomic

    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def run(args: argparse.Namespace) -> int:
    from zsq_engine.synth import synthesize

    _check_args(args)
    device = common.resolve_device(args.device)
    guard.check_backend_env(device)
    _say_resume(args)
    teacher, shape, classes = args.model, None, None
    if ":" in args.model or args.weights or args.input_size or args.num_classes:
        teacher, info = eval_data.load_model(args)  # a model object: then the file records its fingerprint
        shape, classes = info.input_shape, info.num_classes
    t0 = time.perf_counter()

    finished_here = []

    def on_batch_done(b: int, n: int) -> None:  # one line per batch, also with --no-progress
        elapsed = time.perf_counter() - t0
        finished_here.append(b)
        left = n - (b + 1)  # batches run in order; a resumed run starts after the finished ones
        eta = f"; about {_minutes(left * elapsed / len(finished_here))} left" if left > 0 else ""
        print(f"  batch {b + 1}/{n} done ({elapsed:.1f} s{eta})", flush=True)

    if args.method == "gdfq":
        print("training the GDFQ generator first (one phase before the batches)", flush=True)
    with guard.writing(args.out):
        result = synthesize(teacher, args.method, input_shape=shape, num_classes=classes, num=args.num, batch_size=args.batch_size, iters=args.iters,
                            seed=args.seed, device=device, preset=args.preset, out=args.out,
                            overwrite=args.overwrite, show_progress=not args.no_progress, on_batch_done=on_batch_done)
    meta = result.meta
    elapsed = time.perf_counter() - t0
    if result.rank == 0 and not result.computed and result.world_size == 1:
        print(f"nothing to synthesize: {args.out} already holds this run (same settings); reused it", flush=True)
    if result.world_size > 1:
        print(f"rank {result.rank}/{result.world_size}: synthesized batches {list(result.computed)}", file=sys.stderr)
    if result.rank == 0:
        start, end = meta["bn_loss_start"], meta["bn_loss_end"]
        print(f"zsq synthesize: {tuple(result.images.shape)} images ({args.method}, preset {args.preset}, "
              f"{meta['settings']['iters']} iters) -> {args.out} in {elapsed:.1f} s; BN loss "
              f"{sum(start) / len(start):.4g} -> {sum(end) / len(end):.4g} (mean over batches)")
        if args.preview:
            info = eval_data.model_info(args)
            with guard.writing(args.preview, "--preview"):
                write_preview(result.images, result.labels, info.mean, info.std, Path(args.preview))
            print(f"preview written to {args.preview}", file=sys.stderr)
    return 0
