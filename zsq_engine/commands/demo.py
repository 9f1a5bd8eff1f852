"""``zsq demo``: the main job end to end on the embedded default model (Fashion-MNIST ResNet).

1. FP accuracy and naive post-training quantization (ranges from real training images, no
   optimisation) for each configuration;
2. Genie-D synthesis of calibration images from the model's BN statistics (fast preset);
3. zero-shot Genie-M block reconstruction on those synthetic images (fast preset);
4. the real-data upper bound: QDrop reconstruction on real training images (fast preset);
5. the Genie model of the first configuration converted to a real integer model
   (``zsq_engine.runtime``): its accuracy next to the fake-quant one, its latency next to FP32;

then an accuracy table on the 10k test images, written as markdown + JSON first, and a PNG (a grid
of synthetic samples beside the accuracy bars) when matplotlib is installed.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from . import common, guard

_OUTPUTS = ("report.md", "results.json", "demo.png")
_DEFAULT_OUT = "runs/demo"
# interleaved latency measurements: independent runs, and the relative spread of their speed-up
# ratios above which the line warns that the machine was too busy for the number to mean much
_LATENCY_RUNS = 5
_NOISY_SPREAD = 0.25


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="end-to-end zero-shot quantization demo on the embedded Fashion-MNIST ResNet",
        description="Fashion-MNIST ResNet -> Genie-D synthetic data -> Genie-M reconstruction, compared with FP, "
                    "naive PTQ and real-data QDrop on the test set; writes report.md, results.json and demo.png.")
    p.add_argument("--bits", nargs="*", default=["W4A4"], help="configurations (default W4A4; e.g. W4A4 W3A3 W2A4)")
    p.add_argument("--calib-images", type=common.positive_int, default=256,
                   help="real training images for naive PTQ ranges and the real-data QDrop row (default 256)")
    p.add_argument("--synth-num", type=common.positive_int, default=256,
                   help="synthetic images to generate (default 256)")
    p.add_argument("--synth-iters", type=common.positive_int, default=None,
                   help="Genie-D iterations per batch (default: the fast preset's)")
    p.add_argument("--iters", type=common.positive_int, default=None,
                   help="reconstruction iterations per unit (default: the fast preset's)")
    p.add_argument("--preset", default="fast", choices=("fast", "paper"), help="reconstruction preset (default fast)")
    p.add_argument("--no-integer", action="store_true",
                   help="skip converting the Genie model to an integer model (accuracy + latency rows)")
    p.add_argument("--out", default=None, help=f"output folder for report.md, results.json, demo.png (default "
                                               f"{_DEFAULT_OUT}, the demo's own folder, replaced on every run; a "
                                               "folder you name is protected: see --overwrite)")
    common.add_overwrite_arg(p, "report.md / results.json / demo.png in --out")
    common.add_device_args(p)
    common.add_data_args(p)
    p.set_defaults(run=run)


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file + rename so an interrupted run never leaves half a report."""
    from zsq_engine.utils import write_text_atomic

    with guard.writing(path):
        write_text_atomic(path, text)


def write_figure(path: Path, images: torch.Tensor, rows, mean, std) -> None:
    """A PNG: 4x4 synthetic samples (left) and horizontal accuracy bars (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    n = min(16, images.shape[0])
    shown = (images[:n, 0].float() * std[0] + mean[0]).clamp(0, 1)
    fig = plt.figure(figsize=(11, 4.6))
    grid = GridSpec(4, 9, figure=fig, wspace=0.08, hspace=0.08)
    for i in range(n):
        ax = fig.add_subplot(grid[i // 4, i % 4])
        ax.imshow(shown[i].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    fig.text(0.2, 0.95, "Genie-D synthetic samples (no real data)", ha="center")
    ax = fig.add_subplot(grid[:, 5:])
    labels = [r["method"] if r["bits"] == "FP32" else f"{r['method']} {r['bits']}" for r in rows]
    accs = [r["accuracy"] for r in rows]
    colors = ["#555555" if r["bits"] == "FP32" else "#c44e52" if r["method"].startswith("naive")
              else "#4c72b0" if r["method"].startswith("Genie") else "#55a868" for r in rows]
    y = list(range(len(rows)))[::-1]
    ax.barh(y, accs, color=colors)
    ax.set_yticks([])  # labels go inside the bars: tick labels would run into the sample grid
    lo = max(0.0, min(accs) - 5.0)
    ax.set_xlim(lo, 100)
    for yi, a, label in zip(y, accs, labels):
        ax.text(lo + 0.3, yi, label, va="center", fontsize=8, color="white")
        ax.text(a + 0.2, yi, f"{a:.2f}", va="center", fontsize=8)
    ax.set_xlabel("Fashion-MNIST test top-1 %")
    from zsq_engine.utils import save_figure_atomic

    save_figure_atomic(fig, path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from zsq_engine import __version__
    from zsq_engine.evaluation import evaluate_accuracy, format_table
    from zsq_engine.models import get_model, get_model_info
    from zsq_engine.quant import naive_ptq
    from zsq_engine.recon import PRESETS, reconstruct_model
    from zsq_engine.synth import synthesize

    from ..data.sources import fmnist_batches, fmnist_calibration

    from .quantize import check_eval_data

    configs = common.parse_bit_configs(args.bits)
    guard.check_positive(args, "batch_size")
    # the default folder belongs to the demo (rerunning the README command must work); one you name is protected
    out = guard.output_folder(args.out or _DEFAULT_OUT, _OUTPUTS, "--out",
                              overwrite=args.overwrite or args.out is None)
    device = common.resolve_device(args.device)
    guard.check_backend_env(device)
    check_eval_data("fmnist_resnet", args.data_dir, need_train=True)
    show = not args.no_progress
    torch.manual_seed(args.seed)
    t_all = time.perf_counter()
    model = get_model("fmnist_resnet", pretrained=True).to(device).eval()
    info = get_model_info("fmnist_resnet")
    test = fmnist_batches("test", args.batch_size, args.data_dir)
    calib = fmnist_calibration(args.calib_images, args.data_dir, args.seed)
    real_images = torch.cat([x for x, _ in calib])
    print(f"zsq demo: fmnist_resnet, Fashion-MNIST test split (10000 images), device {device}")

    rows = []

    def add(method, data, bits, acc, seconds):
        fp_acc = rows[0]["accuracy"] if rows else acc
        rows.append({"method": method, "data": data, "bits": bits, "accuracy": acc, "delta": acc - fp_acc,
                     "seconds": round(seconds, 1)})
        print(f"  {method:22s} {bits:5s} {acc:6.2f} %  ({seconds:.1f} s)", flush=True)

    t0 = time.perf_counter()
    add("FP32", "-", "FP32", evaluate_accuracy(model, test, device, desc="FP32", show_progress=show),
        time.perf_counter() - t0)
    for wbits, abits in configs:
        t0 = time.perf_counter()
        q = naive_ptq(model, [(x.to(device), y) for x, y in calib], wbits, abits, progress=False)
        add("naive PTQ", f"{args.calib_images} real", f"W{wbits}A{abits}",
            evaluate_accuracy(q, test, device, desc="naive", show_progress=show), time.perf_counter() - t0)

    print(f"  synthesizing {args.synth_num} Genie-D images (fast preset) ...", flush=True)
    t0 = time.perf_counter()
    synth = synthesize("fmnist_resnet", "genie", num=args.synth_num, iters=args.synth_iters, seed=args.seed,
                       device=device, preset="fast", show_progress=show)
    synth_seconds = time.perf_counter() - t0
    synth_images = synth.images
    print(f"  Genie-D synthesis: {tuple(synth_images.shape)} in {synth_seconds:.1f} s", flush=True)

    recon_iters = args.iters or PRESETS[args.preset]["iters"]
    genie_models = {}
    for wbits, abits in configs:
        for method, data, label, images in (("genie", "synthetic", "Genie (zero-shot)", synth_images),
                                            ("qdrop", "real", "QDrop (real data)", real_images)):
            t0 = time.perf_counter()
            r = reconstruct_model(model, images, wbits, abits, method=method, preset=args.preset, iters=args.iters,
                                  num=images.shape[0], seed=args.seed, device=device, show_progress=show)
            acc = evaluate_accuracy(r.model, test, device, desc=label, show_progress=show)
            add(label, f"{images.shape[0]} {data}", f"W{wbits}A{abits}", acc, time.perf_counter() - t0)
            if method == "genie":
                genie_models[(wbits, abits)] = r.model

    integer = None
    if not args.no_integer:
        (wbits, abits), genie = next(iter(genie_models.items()))
        t0 = time.perf_counter()
        integer = integer_model_summary(model, genie, test, device, show)
        add("Genie integer model", f"{synth_images.shape[0]} synthetic", f"W{wbits}A{abits}", integer["accuracy"],
            time.perf_counter() - t0)
        print("  " + integer["line"], flush=True)

    body = [(r["method"], r["data"], r["bits"], f"{r['accuracy']:.2f}", "" if r["bits"] == "FP32" else
             f"{r['delta']:+.2f}", f"{r['seconds']:.1f}") for r in rows]
    table = format_table(("method", "calibration data", "bits", "top-1 %", "vs FP", "time s"), body)
    elapsed = time.perf_counter() - t_all
    print(table)
    if integer is not None:
        print(integer["line"])
    print(f"total {elapsed:.1f} s (synthesis {synth_seconds:.1f} s)")

    meta = {"zsq_engine": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "seed": args.seed, "calib_images": args.calib_images,
            "synth_images": int(synth_images.shape[0]), "synth_iters": synth.meta["settings"]["iters"],
            "recon_preset": args.preset, "recon_iters": recon_iters, "synth_seconds": round(synth_seconds, 1),
            "seconds": round(elapsed, 2)}
    results = {"meta": meta, "rows": rows}
    if integer is not None:
        results["integer_model"] = {k: v for k, v in integer.items() if k != "line"}
    try:
        import matplotlib  # noqa: F401
        have_figure = True
    except ImportError:
        have_figure = False
    _write_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    _write_atomic(out / "report.md", "\n".join([
        "# zsq demo: zero-shot quantization of the Fashion-MNIST ResNet", "",
        f"- naive PTQ: per-channel asymmetric weights (Lp scale search), per-tensor activations with min/max "
        f"ranges from {args.calib_images} real training images, no optimisation;",
        f"- Genie (zero-shot): {synth_images.shape[0]} Genie-D images synthesized from the BN statistics "
        f"({meta['synth_iters']} iterations per batch), then Genie-M block reconstruction "
        f"({recon_iters} iterations per unit, preset {args.preset}); no real image is seen;",
        f"- QDrop (real data): the same reconstruction budget on {args.calib_images} real training images "
        f"(upper bound).", "",
        "First and last layer 8-bit; the first layer's input stays float.", "",
        table, "",
        *([f"Genie integer model (real int8 / packed int4 kernels, zsq_engine.runtime): {integer['line']}", ""]
          if integer is not None else []),
        *(["![synthetic samples and accuracy](demo.png)", ""] if have_figure else []),
        "Run: " + ", ".join(f"{k}={v}" for k, v in meta.items()), ""]))
    # the results first: a missing optional plotting library must not cost the run
    if not have_figure:
        print(f"report written to {out / 'report.md'} and {out / 'results.json'}; figure skipped "
              "(matplotlib is not installed: pip install matplotlib)")
        return 0
    with guard.writing(out / "demo.png"):
        write_figure(out / "demo.png", synth_images, rows, info.mean, info.std)
    print(f"report written to {out / 'report.md'} (figure {out / 'demo.png'})")
    return 0


def integer_model_summary(fp_model, fake_quant, test, device, show: bool) -> dict:
    """Convert ``fake_quant`` to an integer model; its test accuracy, and the latency of FP32 and
    of the integer model at batch 1 and 64 on ``device`` (a few seconds on 2 CPU cores).

    Latency: :data:`_LATENCY_RUNS` independent measurements, each timing the two models
    round-robin (so load changes hit both alike); the line gives the median of the runs and warns
    when their speed-up ratios spread by more than :data:`_NOISY_SPREAD` of the median."""
    from zsq_engine.evaluation import evaluate_accuracy
    from zsq_engine.runtime import convert
    from zsq_engine.runtime.latency import device_name, make_contenders, measure

    int_model = convert(fake_quant).to(device)
    acc = evaluate_accuracy(int_model, test, device, desc="integer model", show_progress=show)
    contenders = make_contenders(fp_model, int_model, device, precisions=("fp32",))
    runs = [measure(contenders, (1, 28, 28), (1, 64), device, warmup=2, repeats=5, seed=r, show_progress=False)
            for r in range(_LATENCY_RUNS)]
    samples = {}
    for rows in runs:
        for r in rows:
            samples.setdefault((r["impl"], r["batch"]), []).append(r["ms"])
    ms = {k: statistics.median(v) for k, v in samples.items()}
    parts, noisy = [], []
    for b in (1, 64):
        ratios = [f / i for f, i in zip(samples[("fp32", b)], samples[("zsq int", b)])]
        mid = statistics.median(ratios)
        spread = (max(ratios) - min(ratios)) / mid
        parts.append(f"batch {b}: FP32 {ms[('fp32', b)]:.2f} ms, integer {ms[('zsq int', b)]:.2f} ms ({mid:.2f}x)")
        if spread > _NOISY_SPREAD:
            noisy.append(f"batch {b} ratios {min(ratios):.2f}x-{max(ratios):.2f}x")
    line = f"top-1 {acc:.2f} %; latency on {device_name(device)} (median of {_LATENCY_RUNS} interleaved runs): " \
        + "; ".join(parts)
    if noisy:
        line += f" [noisy: {', '.join(noisy)} across runs; the machine is busy, rerun `zsq bench` when it is idle]"
        print(f"warning: the latency measurement is noisy ({', '.join(noisy)}); the ratios are not reliable",
              file=sys.stderr)
    return {"accuracy": acc, "latency_ms": {f"{impl} batch {b}": v for (impl, b), v in ms.items()},
            "latency_runs_ms": {f"{impl} batch {b}": v for (impl, b), v in samples.items()},
            "latency_noisy": bool(noisy), "device": device_name(device), "line": line}
