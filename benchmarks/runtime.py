"""End-to-end integer-model inference vs float and vs the int8 engines a user would pick instead.

    python -m benchmarks.runtime --device cpu            # rows appended to results/runtime.jsonl
    python -m benchmarks.runtime --device cuda           # the GPU set (bash benchmarks/run_gpu.sh)
    python -m benchmarks.runtime --device cpu --quick    # smoke run: tiny sizes, writes nothing

CPU (issue 22): the Fashion-MNIST ResNet (committed weights, real images, 1x28x28), ResNet-18,
MobileNetV2 and EfficientNet-Lite0 (3x224x224, ``--input-size``; ImageNet weights for
EfficientNet-Lite0 when its weights package is installed, else random weights with BN statistics
measured on the calibration images: benchmarks/runtime_models.py) at batch 1 and 16,
1 and 2 threads (``--models``, ``--batches``, ``--threads``). Contenders, all in ONE interleaved
run per (model, threads): FP32 channels_last, FP32 ``torch.compile``, torch.ao FX x86 int8,
torchao PT2E + Inductor int8, ONNX Runtime (CPU provider) on the QDQ export of the zsq W8A8 model
with an 8-bit first input, and the zsq integer models (naive PTQ, first / last layer 8-bit):
W8A8, W8A8 with an 8-bit first input (torch.ao's policy: an int8 stem), W4A8, W4A4
(``--zsq``, ``--peers``; see zsq_engine.bench_peers).

GPU: ResNet-50, MobileNetV2 and EfficientNet-Lite0 (random weights, 3x224x224) at batch 1, 64
and 256: FP16 and BF16 channels_last (cuDNN) and FP32 vs the zsq integer model at W8A8; batch 1
is also timed replaying a CUDA graph. Target: H100 ResNet-50 batch 256 INT8 >= 1.8x FP16.

Before timing, every contender is checked against a fake-quant model (top-1 agreement, recorded
as ``agreement_vs_fake_quant`` with ``agreement_reference``): a zsq model against its own, the
peers against the W8A8 8-bit-input model (the one exported for ONNX Runtime), on the calibration
images (real Fashion-MNIST images for its ResNet). On a random-weight network the predictions on
noise images are near ties, so there a contender also passes when its logits reach ``--min-sqnr``
dB against the reference (``sqnr_db_vs_reference``, recorded for every contender). A peer that
cannot be built or disagrees is not timed; its rows say why (``skipped``). CPU timing: the contenders of one batch size round-robin
(runtime.latency.measure), median of ``--repeats`` rounds; compile time is not timed. GPU timing
through benchmarks.harness. Latency-only: random calibration images except for the Fashion-MNIST
ResNet.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Sequence

import torch

from benchmarks import harness

CPU_MODELS = ("fmnist_resnet", "resnet18", "mobilenet_v2", "efficientnet_lite0")
CPU_BATCHES = (1, 16)
CPU_THREADS = (1, 2)
GPU_MODELS = ("resnet50", "mobilenet_v2", "efficientnet_lite0")
GPU_BATCHES = (1, 64, 256)


def _calibration(name: str, shape, num: int = 64) -> List[torch.Tensor]:
    if name == "fmnist_resnet":
        from zsq_engine.data.sources import fmnist_calibration

        return [x for x, _ in fmnist_calibration(num, None, 0)]
    g = torch.Generator().manual_seed(0)
    return [torch.randn(min(32, num - i), *shape, generator=g) for i in range(0, num, 32)]


@torch.no_grad()
def _agreement(qmodel, int_model, shape, device) -> float:
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(1))
    ref = qmodel.to(device)(x.to(device)).argmax(1)
    got = int_model.to(device)(x.to(device)).argmax(1)
    return float((ref == got).float().mean()) * 100


def bench_model(name: str, shape, batches, device, bits_list, with_ao: bool, env: Dict, quick: bool) -> List[Dict]:
    from zsq_engine.models import get_model
    from zsq_engine.quant import naive_ptq
    from zsq_engine.runtime import convert
    from zsq_engine.runtime.latency import make_contenders, measure, torch_ao_x86_int8

    fp = get_model(name, pretrained=name == "fmnist_resnet").eval()
    calib = _calibration(name, shape, 16 if quick else 64)
    contenders = []
    agreement = {}
    precisions = ("fp32",) if device.type == "cpu" else ("fp32", "fp16", "bf16")
    contenders += make_contenders(fp, None, device, precisions=precisions)
    # The papers' policy keeps the first layer's input float (an fp32 stem conv); torch.ao
    # quantizes the image to 8 bits and runs an int8 stem. The "8-bit input" variant applies
    # torch.ao's policy to our model too, so that row compares the same arithmetic.
    variants = [(bits, False) for bits in bits_list] + ([(8, True)] if with_ao and 8 in bits_list else [])
    for bits, int_input in variants:
        q = naive_ptq(fp, calib, bits, bits, progress=False, quantize_first_input=int_input).eval()
        im = convert(q)
        label = f"W{bits}A{bits}" + (" 8-bit input" if int_input else "")
        agreement[label] = _agreement(q, im, shape, device)
        c = make_contenders(fp, im, device, precisions=())[0]
        c.name = f"zsq int {label}"
        contenders.append(c)
    if with_ao:
        contenders += make_contenders(fp, None, device, precisions=(), ao_model=torch_ao_x86_int8(fp, calib))
    timer = harness.time_fn
    if quick:
        timer = lambda fn, dev: harness.time_fn(fn, dev, warmup=1, repeats=2)  # noqa: E731
    rows = measure(contenders, shape, batches, device, timer=timer, show_progress=False,
                   cuda_graph_max_batch=0)
    if device.type == "cuda":  # batch 1 again, replayed from a CUDA graph
        graph_rows = measure(contenders, shape, [1], device, timer=timer, show_progress=False, cuda_graph_max_batch=1)
        rows += graph_rows
    out = []
    for r in rows:
        prec = r["precision"]
        out.append(dict(env, bench="runtime", model=name, input=list(shape), impl=r["impl"], precision=prec,
                        batch=r["batch"], cuda_graph=r["cuda_graph"], ms=r["ms"], images_per_s=r["images_per_s"],
                        speedup_vs_fp32=r["speedup_vs_fp32"], speedup_vs_torch_ao=r["speedup_vs_torch_ao"],
                        agreement_vs_fake_quant=agreement.get(r["impl"][len("zsq int "):])
                        if r["impl"].startswith("zsq") else None,
                        threads=torch.get_num_threads()))
    if device.type == "cuda":  # ratios against fp16 for the GPU target
        for r in out:
            base = [x for x in out if x["impl"] == "fp16" and x["batch"] == r["batch"] and x["cuda_graph"] == r["cuda_graph"]]
            r["speedup_vs_fp16"] = base[0]["ms"] / r["ms"] if base else None
    return out


# --zsq names: (weight bits, activation bits, first-layer input quantized to 8 bits)
ZSQ_VARIANTS = {"w8a8": (8, 8, False), "w8a8-stem8": (8, 8, True), "w4a8": (4, 8, False), "w4a4": (4, 4, False)}
# --peers names -> zsq_engine.bench_peers names
PEER_FLAGS = {"compile": "fp32 torch.compile", "torch.ao": "torch.ao int8", "pt2e": "torchao pt2e int8",
              "onnxruntime": "onnxruntime"}


def _variant_label(wbits: int, abits: int, int_input: bool) -> str:
    return f"W{wbits}A{abits}" + (" 8-bit input" if int_input else "")


def _check_images(name: str, calib: List[torch.Tensor], num: int) -> torch.Tensor:
    """Real held-out Fashion-MNIST images (another seed than the calibration draw) for its ResNet;
    the calibration images for the random-weight networks (nothing real to compare on)."""
    if name == "fmnist_resnet":
        from zsq_engine.data.sources import fmnist_calibration

        return torch.cat([x for x, _ in fmnist_calibration(num, None, 1)])
    return torch.cat(calib)[:num]


def bench_cpu_model(name: str, shape, batches: Sequence[int], threads_list: Sequence[int], variants: Sequence[str],
                    peers: Sequence[str], env: Dict, *, calib_images: int = 64, check_images: int = 32,
                    min_agreement: float = 90.0, min_sqnr_db: float = 6.0, warmup: int = 3,
                    repeats: int = 10) -> List[Dict]:
    """All contenders of one CPU model, built once, checked and timed interleaved per thread count.

    Random-weight networks pass the check on logit SQNR >= ``min_sqnr_db`` against the reference
    as well as on top-1 agreement: on noise images their top-1 predictions are near ties."""
    from zsq_engine.bench_peers import (Candidate, add_peer_ratios, check_and_split, peer_candidates,
                                        peer_versions, skipped_rows)
    from zsq_engine.quant import naive_ptq
    from zsq_engine.runtime import convert
    from zsq_engine.runtime.latency import Contender, measure

    from benchmarks.runtime_models import benchmark_model

    calib = _calibration(name, shape, calib_images)
    fp, weights = benchmark_model(name, calib)
    qmodels = {}
    for v in variants:
        wbits, abits, int_input = ZSQ_VARIANTS[v]
        qmodels[_variant_label(wbits, abits, int_input)] = naive_ptq(
            fp, calib, wbits, abits, progress=False, quantize_first_input=int_input).eval()
    # The int8 peers quantize the image (an int8 stem): the zsq model with the same policy is the
    # one they are compared with and the one ONNX Runtime runs.
    ref = "W8A8 8-bit input"
    if ref not in qmodels:  # the peers' reference even when it is not timed itself
        qmodels[ref] = naive_ptq(fp, calib, 8, 8, progress=False, quantize_first_input=True).eval()
    references = {f"fake-quant {k}": q for k, q in qmodels.items()}

    def fp32_candidate():
        import copy

        m = copy.deepcopy(fp).to(memory_format=torch.channels_last).eval()

        def fn(x):
            with torch.no_grad():
                return m(x)
        return Candidate("fp32", "fp32", f"fake-quant {ref}", lambda: m,
                         lambda _: Contender("fp32", "fp32", fn,
                                             lambda x: x.float().contiguous(memory_format=torch.channels_last)))

    def zsq_candidate(label):
        def build():
            return convert(qmodels[label])

        def contender(im):
            def fn(x, im=im):
                with torch.no_grad():
                    return im(x)
            return Contender(f"zsq int {label}", label.split()[0], fn, lambda x: x.float().contiguous())
        return Candidate(f"zsq int {label}", label.split()[0], f"fake-quant {label}", build, contender)

    candidates = [fp32_candidate()]
    candidates += peer_candidates(fp, calib, shape, peers=[PEER_FLAGS[p] for p in peers],
                                  onnx_qmodel=qmodels[ref], reference=f"fake-quant {ref}")
    candidates += [zsq_candidate(_variant_label(*ZSQ_VARIANTS[v])) for v in variants]
    images = _check_images(name, calib, check_images)
    ref_fns = {k: (lambda x, q=q: q(x.float().contiguous())) for k, q in references.items()}
    versions = peer_versions()
    out: List[Dict] = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        torch._dynamo.reset()  # Inductor bakes the thread count into its kernels: compile anew
        contenders, statuses = check_and_split(candidates, ref_fns, images, batch=min(batches),
                                               min_agreement=min_agreement,
                                               min_sqnr_db=None if weights == "pretrained" else min_sqnr_db)
        for s in statuses:
            if s.skipped:
                print(f"  {name} {threads} thread(s): {s.name} skipped: {s.skipped}", flush=True)
        rows = measure(contenders, shape, batches, torch.device("cpu"), warmup=warmup, repeats=repeats,
                       show_progress=False)
        by_name = {s.name: s for s in statuses}
        for r in rows:
            s = by_name[r["impl"]]
            r.update(skipped=None, agreement_vs_fake_quant=s.agreement, sqnr_db_vs_reference=s.sqnr_db,
                     agreement_reference=s.reference)
        rows += skipped_rows(statuses, batches)
        for r in rows:
            r.update(threads=threads, weights=weights)
            out.append(dict(env, bench="runtime", model=name, input=list(shape), **versions, **r))
    return add_peer_ratios(out)


def _cpu_goal(r: Dict):
    """Issue 22's goal for this row as (minimum vs fastest int8 peer, minimum vs FP32), or None."""
    if r["impl"] != "zsq int W8A8 8-bit input" and not (r["model"] == "fmnist_resnet" and r["impl"].startswith("zsq")):
        return None
    if r["model"] == "resnet18":
        return 1.2, 3.0
    if r["model"] in ("mobilenet_v2", "efficientnet_lite0") and r["batch"] == 1:
        return 1.0, None
    if r["model"] == "fmnist_resnet" and r["batch"] == 1:
        return None, 2.0
    return None


def _fmt_goal(value, goal) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}x" + ("" if goal is None else f" ({'met' if value >= goal else 'MISSED'} >= {goal:g}x)")


def _targets(rows: List[Dict], device: torch.device) -> List[str]:
    lines = []
    for r in rows:
        if device.type == "cpu":
            if r.get("skipped"):
                lines.append(f"{r['model']} {r['threads']} thread(s) batch {r['batch']}: {r['impl']} skipped: "
                             f"{r['skipped']}")
                continue
            if not r["impl"].startswith("zsq"):
                continue
            goal = _cpu_goal(r) or (None, None)
            lines.append(f"{r['model']} {r['impl']} batch {r['batch']} {r['threads']} thread(s): "
                         f"{_fmt_goal(r['speedup_vs_fastest_int8_peer'], goal[0])} the fastest int8 peer "
                         f"({r['fastest_int8_peer'] or 'none timed'}), {_fmt_goal(r['speedup_vs_fp32'], goal[1])} "
                         f"FP32 channels_last")
            continue
        if not r["impl"].startswith("zsq"):
            continue
        where = f"{r['model']} {r['impl']} batch {r['batch']}"
        if r["model"] == "resnet50" and r["batch"] == 256 and r.get("speedup_vs_fp16") is not None:
            lines.append(f"{where}: {r['speedup_vs_fp16']:.2f}x FP16 (target >= 1.8x on H100: "
                         f"{'met' if r['speedup_vs_fp16'] >= 1.8 else 'MISSED'})")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 64x64 ImageNet inputs, batch 1 and 2, 1 thread, 1 warm-up, 2 rounds; "
                             "writes nothing")
    parser.add_argument("--models", nargs="+", choices=CPU_MODELS, default=list(CPU_MODELS),
                        help="CPU models (default: all four)")
    parser.add_argument("--batches", type=int, nargs="+", default=list(CPU_BATCHES), help="CPU batch sizes (default 1 16)")
    parser.add_argument("--threads", type=int, nargs="+", default=list(CPU_THREADS),
                        help="CPU thread counts, each a separate interleaved run (default 1 2)")
    parser.add_argument("--zsq", nargs="+", choices=sorted(ZSQ_VARIANTS), default=list(ZSQ_VARIANTS),
                        help="zsq integer models (default: all; w8a8-stem8 = W8A8 with an 8-bit first input)")
    parser.add_argument("--peers", nargs="*", choices=list(PEER_FLAGS), default=list(PEER_FLAGS),
                        help="peers next to FP32 channels_last (default: all; none with an empty list)")
    parser.add_argument("--input-size", "--resnet18-size", dest="input_size", type=int, default=224,
                        help="input size of the ImageNet models on the CPU (default 224)")
    parser.add_argument("--warmup", type=int, default=3, help="CPU: untimed calls per contender (default 3)")
    parser.add_argument("--repeats", type=int, default=10, help="CPU: interleaved timed rounds, median (default 10)")
    parser.add_argument("--check-images", type=int, default=32,
                        help="CPU: images for the agreement check before timing (default 32)")
    parser.add_argument("--min-agreement", type=float, default=90.0,
                        help="CPU: top-1 agreement (%%) below which a contender is not timed (default 90)")
    parser.add_argument("--min-sqnr", type=float, default=6.0,
                        help="CPU, random-weight networks only: a contender below --min-agreement is still "
                             "timed when its logits reach this SQNR (dB) against its reference (default 6; "
                             "logits unrelated to the reference's, of the same power, give -3)")
    parser.add_argument("--no-write", action="store_true", help="do not append rows to the results file")
    parser.add_argument("--out-dir", default=None, help="results directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    for flag in ("batches", "threads"):
        if any(v < 1 for v in getattr(args, flag)):
            parser.error(f"--{flag} must be positive integers, got {getattr(args, flag)}")
    for flag in ("input_size", "warmup", "repeats", "check_images"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    harness.set_cpu_threads_from_env()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks.runtime --device cuda needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    env = harness.environment(device)
    rows: List[Dict] = []
    if device.type == "cpu":
        size = 64 if args.quick else args.input_size
        threads = (1,) if args.quick else args.threads
        batches = (1, 2) if args.quick else args.batches
        warmup, repeats = (1, 2) if args.quick else (args.warmup, args.repeats)
        for name in args.models:
            shape = (1, 28, 28) if name == "fmnist_resnet" else (3, size, size)
            rows += bench_cpu_model(name, shape, batches, threads, args.zsq, args.peers, env,
                                    calib_images=16 if args.quick else 64, check_images=args.check_images,
                                    min_agreement=args.min_agreement, min_sqnr_db=args.min_sqnr,
                                    warmup=warmup, repeats=repeats)
            print(f"done {name}", flush=True)
        columns = ["model", "threads", "batch", "impl", "precision", "ms", "images_per_s", "speedup_vs_fp32",
                   "speedup_vs_fastest_int8_peer", "agreement_vs_fake_quant", "sqnr_db_vs_reference"]
    else:
        for name in GPU_MODELS:
            shape = (3, 64, 64) if args.quick else (3, 224, 224)
            rows += bench_model(name, shape, (1, 4) if args.quick else GPU_BATCHES, device, (8,), False, env,
                                args.quick)
            print(f"done {name}", flush=True)
        columns = ["model", "impl", "precision", "batch", "cuda_graph", "ms", "images_per_s", "speedup_vs_fp32",
                   "speedup_vs_torch_ao", "agreement_vs_fake_quant"]
    print(harness.markdown_table(rows, columns))
    for line in _targets(rows, device):
        print(line)
    if args.quick or args.no_write:
        print("(quick / --no-write: nothing written)")
    else:
        print(f"rows appended to {harness.write_rows('runtime', rows, args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
