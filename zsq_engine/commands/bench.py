"""``zsq bench``: end-to-end latency / throughput of one network as FP32, FP16 / BF16 (GPU), the
zsq integer model and PyTorch's own x86 int8 model (CPU), at several batch sizes."""
from __future__ import annotations

import argparse
import json

import torch

from . import common, eval_data, guard
from .convert import add_source_args, check_source_args, source_models

_EPILOG = """contenders (zsq_engine.runtime.latency):
  fp32, fp16, bf16   the float model in channels_last (fp16 / bf16 on CUDA only)
  zsq int            the integer model (from --int-model, or converted here from the fake-quant model)
  torch.ao int8      torch.ao FX prepare/convert with the x86 qconfig mapping, calibrated on the same
                     images (CPU only; --no-torch-ao skips it)
  onnxruntime        with --onnxruntime: the fake-quant model exported as QDQ ONNX (zsq export), ONNX
                     Runtime CPU provider, --threads (or torch's) intra-op threads
timing: per batch size the contenders run round-robin (one call each per round, so a change in
machine load hits all alike), median of --repeats rounds after --warmup calls (CPU wall clock,
CUDA events); all get the same images, prepared (dtype, layout) outside the timed call; the
integer model is fed fp32 NCHW images.
--cuda-graph N captures every CUDA contender at batch sizes <= N in a CUDA graph.
Writes <out>/bench.json (rows + settings) and <out>/bench.png (throughput per batch size, needs
matplotlib: skipped with a note without it); an earlier bench.json / bench.png is replaced only
with --overwrite.
examples:
  zsq bench --model fmnist_resnet --wbits 4 --abits 4 --batch-sizes 1 16 64
  zsq bench --model resnet18 --input-size 112 --batch-sizes 1 16
  zsq bench --int-model int.pt --device cuda --batch-sizes 1 64 256 --cuda-graph 16"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="latency / throughput: FP32, FP16/BF16, integer model, torch.ao int8",
        description="Time one network end to end in every form side by side at several batch sizes; print a "
                    "table, write JSON and a PNG plot.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(p)
    p.add_argument("--int-model", default=None,
                   help="integer model file from `zsq convert` (default: convert the fake-quant model here)")
    p.add_argument("--batch-sizes", type=common.positive_int, nargs="+", default=[1, 16, 64],
                   help="batch sizes (default 1 16 64)")
    p.add_argument("--input-size", type=common.positive_int, default=None,
                   help="spatial input size H = W (default: the model's own, e.g. 224; smaller runs faster)")
    p.add_argument("--warmup", type=common.positive_int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--repeats", type=common.positive_int, default=10, help="timed calls, median taken (default 10)")
    p.add_argument("--threads", type=common.positive_int, default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument("--no-torch-ao", action="store_true", help="skip PyTorch's x86 int8 model")
    p.add_argument("--onnxruntime", action="store_true",
                   help="add the model exported to ONNX (zsq export) run by ONNX Runtime's CPU provider (CPU only)")
    p.add_argument("--cuda-graph", type=int, default=0, metavar="N",
                   help="on CUDA, replay a captured CUDA graph at batch sizes <= N (default 0: off)")
    p.add_argument("--out", default=None, help="output folder for bench.json and bench.png (default runs/bench, the "
                                               "command's own folder, replaced on every run; a folder you name is "
                                               "protected: see --overwrite)")
    common.add_overwrite_arg(p, "bench.json / bench.png in --out")
    common.add_device_args(p)
    p.add_argument("--data-dir", default=None,
                   help="folder with the Fashion-MNIST idx(.gz) files for calibration (default: $ZSQ_FMNIST_DIR, "
                        "then the Debian package dataset-fashion-mnist)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zsq_engine.evaluation import format_table
    from zsq_engine.models import get_model, list_models
    from zsq_engine.runtime import convert
    from zsq_engine.runtime.io import load_with_meta
    from zsq_engine.runtime.latency import (device_name, make_contenders, measure, plot_throughput,
                                            torch_ao_x86_int8)

    if args.cuda_graph < 0:
        raise guard.bad_value("--cuda-graph", args.cuda_graph, "must be >= 0", "pass 0 (off) or a batch size")
    if args.int_model:
        if args.checkpoint or args.model:
            raise guard.UsageError("--int-model already names the model", "--checkpoint/--model",
                                   "they would be ignored", "drop --checkpoint / --model")
        guard.input_file(args.int_model, "--int-model")
    check_source_args(args, calib_with_checkpoint=True)
    out = guard.output_folder(args.out or "runs/bench", ["bench.json", "bench.png"], "--out",
                              overwrite=args.overwrite or args.out is None)  # the default folder is the command's
    device = common.resolve_device(args.device)
    guard.check_backend_env(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    want_ao = not args.no_torch_ao and device.type == "cpu"
    if args.int_model:
        int_model, meta = guard.load_input(args.int_model, "--int-model", load_with_meta)
        name = meta.get("model")
        if name is None:
            raise guard.CommandError("cannot use --int-model", args.int_model, "it does not record its model name",
                                     "convert it again with `zsq convert` (which records it)")
        if name not in list_models():
            raise guard.CommandError("cannot use --int-model", args.int_model, f"its model {name!r} is not registered",
                                     "`zsq info` lists the models")
        fp_model = get_model(name, pretrained=name == "fmnist_resnet").eval()
        calib = None
        if want_ao:
            args.model, args.checkpoint = name, None
            from .convert import _calibration

            calib = _calibration(name, args.calib_images, args)
    else:
        name, fp_model, qmodel, meta, calib = source_models(args, need_calib=want_ao)
        int_model = convert(qmodel)
    info = eval_data.model_info(args, name)
    shape = tuple(info.input_shape)
    if args.input_size:
        shape = (shape[0], args.input_size, args.input_size)
    ao = torch_ao_x86_int8(fp_model, calib) if want_ao else None
    contenders = make_contenders(fp_model, int_model, device, ao_model=ao)
    if args.onnxruntime:
        if args.int_model or device.type != "cpu":
            raise ValueError("--onnxruntime needs the fake-quant model (--model / --checkpoint, not --int-model) "
                             "and --device cpu")
        from zsq_engine.export.ort import onnxruntime_contender

        contenders.append(onnxruntime_contender(qmodel, shape, args.threads))
    rows = measure(contenders, shape, args.batch_sizes, device, warmup=args.warmup, repeats=args.repeats,
                   cuda_graph_max_batch=args.cuda_graph, seed=args.seed, show_progress=not args.no_progress)
    dev_name = device_name(device)
    title = f"{name} {shape[1]}x{shape[2]} on {dev_name}"
    body = [(r["impl"], r["precision"], r["batch"], f"{r['ms']:.3f}", f"{r['images_per_s']:.1f}",
             "" if r["speedup_vs_fp32"] is None else f"{r['speedup_vs_fp32']:.2f}x",
             "" if r["speedup_vs_torch_ao"] is None else f"{r['speedup_vs_torch_ao']:.2f}x",
             "yes" if r["cuda_graph"] else "") for r in rows]
    table = format_table(("impl", "precision", "batch", "ms", "images/s", "vs fp32", "vs torch.ao", "graph"), body)
    print(title)
    print(table)
    settings = {"model": name, "input_shape": list(shape), "device": dev_name, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "warmup": args.warmup, "repeats": args.repeats,
                "cuda_graph_max_batch": args.cuda_graph, "int_model": {k: v for k, v in meta.items()
                                                                      if k in ("source", "wbits", "abits", "method")}}
    from zsq_engine.utils import write_text_atomic

    with guard.writing(out / "bench.json"):
        write_text_atomic(out / "bench.json", json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"written {out / 'bench.json'} (no plot: matplotlib is not installed)")
        return 0
    with guard.writing(out / "bench.png"):
        plot_throughput(rows, out / "bench.png", title)
    print(f"written {out / 'bench.json'} and {out / 'bench.png'}")
    return 0
