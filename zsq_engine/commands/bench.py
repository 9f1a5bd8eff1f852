"""``zsq bench``: end-to-end latency / throughput of one network as FP32, FP16 / BF16 (GPU), the
zsq integer model and, on the CPU, the int8 engines a user would pick instead (zsq_engine.bench_peers),
at several batch sizes."""
from __future__ import annotations

import argparse
import json

import torch

from . import common, eval_data, guard
from .convert import add_source_args, check_source_args, source_models

# --peers names -> zsq_engine.bench_peers names
PEER_FLAGS = {"compile": "fp32 torch.compile", "torch.ao": "torch.ao int8", "pt2e": "torchao pt2e int8",
              "onnxruntime": "onnxruntime"}

_EPILOG = """contenders (zsq_engine.runtime.latency):
  fp32, fp16, bf16   the float model in channels_last (fp16 / bf16 on CUDA only)
  zsq int            the integer model (from --int-model, or converted here from the fake-quant model)
peers (CPU only, --peers; each one that cannot be built is skipped with its reason):
  compile            fp32 torch.compile: the float model, channels_last, Inductor with freezing
  torch.ao           torch.ao int8: FX prepare/convert with the x86 qconfig mapping, calibrated on the
                     same images (--no-torch-ao drops it)
  pt2e               torchao pt2e int8: torchao's PT2E flow with X86InductorQuantizer, compiled by
                     Inductor (oneDNN int8); needs torchao (pip install 'zsq_engine[bench]')
  onnxruntime        the fake-quant model exported as QDQ ONNX (zsq export), ONNX Runtime CPU
                     provider, --threads (or torch's) intra-op threads; not with --int-model
check: before timing, every contender's top-1 predictions on --check-images images (the calibration
images) are compared with the fake-quant model's (the integer model's with --int-model); below
--min-agreement percent it is not timed. Compile time is not timed.
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
  zsq bench --model resnet18 --batch-sizes 1 16 --threads 2 --peers pt2e onnxruntime
  zsq bench --int-model int.pt --device cuda --batch-sizes 1 64 256 --cuda-graph 16"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="latency / throughput: FP32, FP16/BF16, integer model, int8 peers",
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
    p.add_argument("--peers", nargs="+", metavar="PEER", default=None,
                   help=f"CPU peers to time: any of {', '.join(PEER_FLAGS)}, or none (default: all)")
    p.add_argument("--no-torch-ao", action="store_true", help="drop PyTorch's x86 int8 (FX) model from the peers")
    p.add_argument("--onnxruntime", action="store_true",
                   help="require the ONNX Runtime peer (an error with --int-model or off the CPU); it is among the "
                        "default peers anyway")
    p.add_argument("--check-images", type=common.positive_int, default=32,
                   help="images for the agreement check before timing (default 32)")
    p.add_argument("--min-agreement", type=float, default=90.0,
                   help="top-1 agreement (%%) with the fake-quant model below which a contender is not timed "
                        "(default 90)")
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


def _chosen_peers(args, device) -> list:
    """The bench_peers names to build, from --peers / --no-torch-ao / --onnxruntime."""
    if args.peers is None:
        chosen = list(PEER_FLAGS)
    elif args.peers == ["none"]:
        chosen = []
    else:
        bad = [p for p in args.peers if p not in PEER_FLAGS]
        if bad:
            raise guard.bad_value("--peers", " ".join(args.peers), f"{bad} not among {list(PEER_FLAGS)}",
                                  f"pass some of {' '.join(PEER_FLAGS)}, or none")
        chosen = list(dict.fromkeys(args.peers))
    if args.onnxruntime:
        if args.int_model or device.type != "cpu":
            raise ValueError("--onnxruntime needs the fake-quant model (--model / --checkpoint, not --int-model) "
                             "and --device cpu")
        chosen += [] if "onnxruntime" in chosen else ["onnxruntime"]
    if args.no_torch_ao:
        chosen = [p for p in chosen if p != "torch.ao"]
    return [PEER_FLAGS[p] for p in chosen] if device.type == "cpu" else []


def _model_device(m) -> torch.device:
    t = next(iter(list(m.parameters()) + list(m.buffers())), None)
    return t.device if t is not None else torch.device("cpu")


def _check_images(calib, shape, num: int, seed: int) -> torch.Tensor:
    """The calibration images (real ones where the command has them), else seeded random ones."""
    if calib:
        images = torch.cat([c.float().cpu() for c in calib])
        if tuple(images.shape[1:]) == tuple(shape):
            return images[:num]
    return torch.randn(num, *shape, generator=torch.Generator().manual_seed(seed))


def run(args: argparse.Namespace) -> int:
    from zsq_engine.bench_peers import (Candidate, add_peer_ratios, check_and_split, peer_candidates,
                                        peer_versions, skipped_rows)
    from zsq_engine.evaluation import format_table
    from zsq_engine.models import get_model, list_models
    from zsq_engine.runtime import convert
    from zsq_engine.runtime.io import load_with_meta
    from zsq_engine.runtime.latency import device_name, make_contenders, measure, plot_throughput

    if args.cuda_graph < 0:
        raise guard.bad_value("--cuda-graph", args.cuda_graph, "must be >= 0", "pass 0 (off) or a batch size")
    if not 0.0 <= args.min_agreement <= 100.0:
        raise guard.bad_value("--min-agreement", args.min_agreement, "must be a percentage in [0, 100]",
                              "e.g. 90")
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
    peers = _chosen_peers(args, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    need_calib = any(p in peers for p in ("torch.ao int8", "torchao pt2e int8"))
    qmodel = None
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
        if need_calib:
            args.model, args.checkpoint = name, None
            from .convert import _calibration

            calib = _calibration(name, args.calib_images, args)
    else:
        name, fp_model, qmodel, meta, calib = source_models(args, need_calib=need_calib)
        int_model = convert(qmodel)
    info = eval_data.model_info(args, name)
    shape = tuple(info.input_shape)
    if args.input_size:
        shape = (shape[0], args.input_size, args.input_size)
    # every contender must reproduce the fake-quant model's predictions (the integer model's when
    # only its file is given) before it is timed
    reference = qmodel if qmodel is not None else int_model
    ref_name = "fake-quant model" if qmodel is not None else "integer model (--int-model)"

    def ref_fn(x):  # the device looked up per call: make_contenders moves an --int-model to --device
        return reference(x.to(_model_device(reference), torch.float32).contiguous())

    candidates = [Candidate(c.name, c.precision, ref_name, lambda c=c: c, lambda c: c)
                  for c in make_contenders(fp_model, int_model, device)]
    candidates += peer_candidates(fp_model, calib, shape, peers=peers, onnx_qmodel=qmodel, reference=ref_name)
    images = _check_images(calib, shape, args.check_images, args.seed)
    contenders, statuses = check_and_split(candidates, {ref_name: ref_fn}, images, batch=min(args.batch_sizes),
                                           min_agreement=args.min_agreement)
    rows = measure(contenders, shape, args.batch_sizes, device, warmup=args.warmup, repeats=args.repeats,
                   cuda_graph_max_batch=args.cuda_graph, seed=args.seed, show_progress=not args.no_progress)
    agreement = {s.name: s.agreement for s in statuses}
    for r in rows:
        r["agreement_vs_fake_quant"] = agreement.get(r["impl"])
    add_peer_ratios(rows)
    skipped = [{"impl": r["impl"], "reason": r["skipped"]} for r in skipped_rows(statuses, [None])]
    dev_name = device_name(device)
    title = f"{name} {shape[1]}x{shape[2]} on {dev_name}"

    def ratio(v):
        return "" if v is None else f"{v:.2f}x"

    body = [(r["impl"], r["precision"], r["batch"], f"{r['ms']:.3f}", f"{r['images_per_s']:.1f}",
             ratio(r["speedup_vs_fp32"]), ratio(r["speedup_vs_fastest_int8_peer"]),
             "" if r["agreement_vs_fake_quant"] is None else f"{r['agreement_vs_fake_quant']:.1f}%",
             "yes" if r["cuda_graph"] else "") for r in rows]
    table = format_table(("impl", "precision", "batch", "ms", "images/s", "vs fp32", "vs fastest int8 peer",
                          "agreement", "graph"), body)
    print(title)
    print(table)
    fastest = {r["batch"]: r["fastest_int8_peer"] for r in rows if r["fastest_int8_peer"]}
    if fastest:
        print("fastest int8 peer per batch: " + ", ".join(f"{b}: {p}" for b, p in fastest.items()))
    print(f"fp32 = the float model in channels_last; agreement = top-1 agreement with the {ref_name} on "
          f"{images.shape[0]} images")
    for s in skipped:
        print(f"skipped {s['impl']}: {s['reason']}")
    if device.type != "cpu":
        print("peers (torch.ao, torchao PT2E, ONNX Runtime, torch.compile) are CPU-only: not run on " + device.type)
    settings = {"model": name, "input_shape": list(shape), "device": dev_name, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "warmup": args.warmup, "repeats": args.repeats,
                "cuda_graph_max_batch": args.cuda_graph, "int_model": {k: v for k, v in meta.items()
                                                                      if k in ("source", "wbits", "abits", "method")},
                "peers": peers, "agreement_reference": ref_name, "check_images": int(images.shape[0]),
                "min_agreement": args.min_agreement, "versions": peer_versions()}
    from zsq_engine.utils import write_text_atomic

    with guard.writing(out / "bench.json"):
        write_text_atomic(out / "bench.json", json.dumps({"settings": settings, "rows": rows, "skipped": skipped}, indent=2) + "\n")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"written {out / 'bench.json'} (no plot: matplotlib is not installed)")
        return 0
    with guard.writing(out / "bench.png"):
        plot_throughput(rows, out / "bench.png", title)
    print(f"written {out / 'bench.json'} and {out / 'bench.png'}")
    return 0

