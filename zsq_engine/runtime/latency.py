"""End-to-end latency / throughput of one network in several forms, side by side.

Used by ``zsq bench``, ``zsq demo`` and ``benchmarks/runtime.py``. The forms ("contenders"):

* ``fp32`` / ``fp16`` / ``bf16``: the float model, channels_last (its fastest layout on both
  the CPU and cuDNN); fp16 / bf16 only on CUDA (CPU half-precision convs are not a baseline
  anyone deploys);
* ``zsq int``: the :class:`IntModel`, fed the fp32 NCHW images (its input quantization and
  layout change are part of what is timed);
* ``torch.ao int8``: PyTorch's own x86 int8 model of the same float network (FX graph mode
  ``prepare_fx`` / ``convert_fx`` with the ``x86`` qconfig mapping, calibrated on the same
  images), CPU only.

Each contender's input is prepared once, outside the timed call, from the same images. Timing:
the contenders of one batch size round-robin, one call each per round, median of ``repeats``
rounds (CPU wall clock; CUDA events); ``benchmarks/`` passes its own harness timer instead. With ``cuda_graph_max_batch`` every CUDA contender at
batch sizes up to it is captured in a CUDA graph and replayed (one launch per forward).
"""
from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence

import torch
from torch import nn

from ..evaluation import progress

__all__ = ["Contender", "torch_ao_x86_int8", "make_contenders", "measure", "plot_throughput",
           "device_name"]


def device_name(device) -> str:
    """The GPU's name, or the CPU model with torch's thread count (timings depend on both)."""
    import platform

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    n = torch.get_num_threads()
    return f"{cpu} ({n} thread{'' if n == 1 else 's'})"


@dataclass
class Contender:
    """One form of the network: ``fn(x)`` on inputs made by ``prepare(x_fp32_nchw)``."""

    name: str
    precision: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    prepare: Callable[[torch.Tensor], torch.Tensor]


def torch_ao_x86_int8(model: nn.Module, calib_batches: Iterable[torch.Tensor]) -> nn.Module:
    """PyTorch's x86 int8 version of float ``model`` (FX graph mode, static quantization).

    ``calib_batches``: float NCHW image tensors for the activation observers. Sets
    ``torch.backends.quantized.engine = 'x86'`` (needed to run it). Raises RuntimeError when this
    PyTorch has no x86 quantized engine, ValueError when the model cannot be traced."""
    import copy

    if "x86" not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"this PyTorch has no x86 quantized engine (it has "
                           f"{torch.backends.quantized.supported_engines}); torch.ao int8 cannot be measured")
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    batches = [b for b in calib_batches]
    if not batches:
        raise ValueError("calib_batches is empty: torch.ao needs images to calibrate its observers")
    float_model = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's quantized tensors are deprecated upstream: say so once in docs
        try:
            prepared = prepare_fx(float_model, get_default_qconfig_mapping("x86"), example_inputs=(batches[0].cpu(),))
        except Exception as exc:  # noqa: BLE001 - tracing failures of user models get one message
            raise ValueError(f"torch.ao FX could not trace the model ({type(exc).__name__}: {exc})") from exc
        with torch.no_grad():
            for b in batches:
                prepared(b.cpu().float())
        return convert_fx(prepared).eval()


def _channels_last(dtype: torch.dtype, device: torch.device):
    def prepare(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    return prepare


def make_contenders(fp_model: nn.Module, int_model: Optional[nn.Module], device, *,
                    precisions: Sequence[str] = ("fp32", "fp16", "bf16"),
                    ao_model: Optional[nn.Module] = None) -> List[Contender]:
    """The contenders on ``device`` (models are copied there; fp16 / bf16 skipped on CPU)."""
    import copy

    device = torch.device(device)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    out: List[Contender] = []
    for p in precisions:
        if p not in dtypes:
            raise ValueError(f"precisions must be among {sorted(dtypes)}, got {p!r}")
        if p != "fp32" and device.type != "cuda":
            continue
        m = copy.deepcopy(fp_model).to(device=device, dtype=dtypes[p], memory_format=torch.channels_last).eval()
        out.append(Contender(p, p, _no_grad(m), _channels_last(dtypes[p], device)))
    if int_model is not None:
        im = int_model.to(device).eval()
        out.append(Contender("zsq int", _int_precision(im), _no_grad(im), lambda x: x.to(device=device, dtype=torch.float32)))
    if ao_model is not None and device.type == "cpu":
        ao = ao_model.eval()

        def run_ao(x, ao=ao):
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ao(x)
        out.append(Contender("torch.ao int8", "W8A8", run_ao, lambda x: x.to(device="cpu", dtype=torch.float32)))
    return out


def _no_grad(m: nn.Module) -> Callable:
    def run(x):
        with torch.no_grad():
            return m(x)
    return run


def _int_precision(im) -> str:
    """``W4A4`` style summary of the inner layers (the most common weight / input bits)."""
    from collections import Counter

    w = Counter(m.config["wbits"] for m in im.layers.values())
    a = Counter(m.input_q.bits for m in im.layers.values() if m.input_q is not None)
    if not a:
        return f"W{w.most_common(1)[0][0]}"
    return f"W{w.most_common(1)[0][0]}A{a.most_common(1)[0][0]}"


def _graphed(fn: Callable, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Capture ``fn(x)`` in a CUDA graph; the returned thunk replays it on the same input."""
    stream = torch.cuda.Stream(device=x.device)
    stream.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # kernels compiled and workspaces allocated outside the capture
            fn(x)
    torch.cuda.current_stream(x.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(x)
    return graph.replay


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _interleaved(thunks: Sequence[Callable], device: torch.device, warmup: int, repeats: int) -> List[float]:
    """Median seconds per call of each thunk, timed round-robin (one call of each per round), so a
    change in machine load affects every contender alike and the ratios stay meaningful on a
    shared machine."""
    for fn in thunks:
        for _ in range(warmup):
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    samples: List[List[float]] = [[] for _ in thunks]
    for _ in range(repeats):
        for i, fn in enumerate(thunks):
            samples[i].append(_time_once(fn, device))
    return [statistics.median(s) for s in samples]


def measure(contenders: Sequence[Contender], input_shape: Sequence[int], batch_sizes: Sequence[int], device, *,
            warmup: int = 3, repeats: int = 10, cuda_graph_max_batch: int = 0, seed: int = 0,
            timer: Optional[Callable] = None, show_progress: bool = True, extra: Optional[dict] = None) -> List[dict]:
    """One row per (contender, batch size): ``impl, precision, batch, ms, images_per_s,
    cuda_graph, speedup_vs_fp32, speedup_vs_torch_ao`` (+ ``extra``). Every contender gets the
    same images. Without ``timer`` the contenders of one batch size are timed round-robin
    (median of ``repeats`` rounds after ``warmup`` calls each); ``timer(thunk, device) ->
    seconds`` times each contender on its own instead (the benchmarks pass their harness timer)."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    rows: List[dict] = []
    for b in progress(list(batch_sizes), total=len(batch_sizes), desc="latency", enabled=show_progress):
        images = torch.randn(b, *input_shape, generator=g)
        graph = device.type == "cuda" and b <= cuda_graph_max_batch
        thunks = []
        for c in contenders:
            x = c.prepare(images)
            thunks.append(_graphed(c.fn, x) if graph else (lambda c=c, x=x: c.fn(x)))
        if timer is not None:
            seconds = [timer(t, device) for t in thunks]
        else:
            seconds = _interleaved(thunks, device, warmup, repeats)
        for c, sec in zip(contenders, seconds):
            rows.append({"impl": c.name, "precision": c.precision, "batch": b, "ms": sec * 1e3,
                         "images_per_s": b / sec, "cuda_graph": graph, **(extra or {})})
    for b in batch_sizes:
        same = [r for r in rows if r["batch"] == b]
        base = {r["impl"]: r["ms"] for r in same}
        for r in same:
            r["speedup_vs_fp32"] = base["fp32"] / r["ms"] if "fp32" in base else None
            r["speedup_vs_torch_ao"] = base["torch.ao int8"] / r["ms"] if "torch.ao int8" in base else None
    return rows


def plot_throughput(rows: Sequence[dict], path, title: str) -> None:
    """Grouped bars per batch size: throughput relative to fp32 (linear, from 0; the plain
    images/s when there is no fp32 row), each bar labelled with its images/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    relative = all(r.get("speedup_vs_fp32") is not None for r in rows)
    width = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(2.0 + 1.2 * len(batches) * max(len(impls), 2) / 2, 4))
    for i, impl in enumerate(impls):
        for j, b in enumerate(batches):
            hit = [r for r in rows if r["impl"] == impl and r["batch"] == b]
            if not hit:
                continue
            r = hit[0]
            x = j + (i - (len(impls) - 1) / 2) * width
            y = r["speedup_vs_fp32"] if relative else r["images_per_s"]
            ax.bar([x], [y], width, color=f"C{i}", label=impl if j == 0 else None)
            ax.text(x, y, f"{r['images_per_s']:.0f}/s", ha="center", va="bottom", fontsize=7, rotation=90)
    if relative:
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(batches)))
    ax.set_xticklabels([f"batch {b}" for b in batches])
    ax.set_ylabel("throughput / fp32 throughput" if relative else "images / s")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # room for the labels
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
