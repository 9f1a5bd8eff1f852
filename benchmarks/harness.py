"""One timing harness for every benchmark: timing, hardware limits and result rows.

* CPU: median wall time of ``repeats`` calls after ``warmup`` calls (perf_counter).
* GPU: ``triton.testing.do_bench`` (warm-up, L2 flush between runs, median) when Triton is
  present, else CUDA events around each call; never unsynchronised wall clock.
* Limits: GPU peak DRAM bandwidth from the device name (H100/H200 datasheet values), CPU
  bandwidth *measured* here as a large tensor copy (read + write), reported next to each row.
* Rows: JSON lines appended to ``benchmarks/results/<name>.jsonl`` with device, versions,
  shapes, times and ratios, plus a printed markdown table.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Datasheet peak DRAM bandwidth (GB/s) by device-name substring.
GPU_DRAM_GBPS = {"H100 SXM": 3350.0, "H100 PCIe": 2000.0, "H100 NVL": 3900.0, "H100": 3350.0, "H200": 4800.0}


def time_cpu(fn: Callable[[], object], warmup: int = 2, repeats: int = 7) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def time_cuda(fn: Callable[[], object], warmup: int = 25, repeats: int = 100) -> float:
    """Median seconds per call on the current CUDA device."""
    try:
        from triton.testing import do_bench

        return do_bench(fn, warmup=warmup, rep=repeats, return_mode="median") / 1e3
    except ImportError:
        pass
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return statistics.median(samples)


def time_fn(fn: Callable[[], object], device: torch.device, **kw) -> float:
    return time_cuda(fn, **kw) if device.type == "cuda" else time_cpu(fn, **kw)


_cpu_bw_cache: Dict[int, float] = {}


def cpu_copy_bandwidth_gbps(numel: int = 64 * 2 ** 20) -> float:
    """Measured CPU memory bandwidth: bytes read + written by a large fp32 copy, per second."""
    threads = torch.get_num_threads()
    if threads not in _cpu_bw_cache:
        src = torch.ones(numel)
        dst = torch.empty_like(src)
        seconds = time_cpu(lambda: dst.copy_(src), warmup=2, repeats=9)
        _cpu_bw_cache[threads] = 2 * numel * 4 / seconds / 1e9
    return _cpu_bw_cache[threads]


def peak_bandwidth_gbps(device: torch.device) -> Optional[float]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_DRAM_GBPS.items():
            if key in name:
                return value
        return None
    return cpu_copy_bandwidth_gbps()


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> Dict[str, object]:
    from zsq_engine import __version__

    env = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "device": device_description(device), "torch": torch.__version__, "zsq_engine": __version__,
           "python": platform.python_version()}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cpu":
        env["cpu_simd"] = cpu_simd_flags()
    return env


def cpu_simd_flags() -> List[str]:
    """The SIMD extensions the CPU exposes that int8 kernels use (the same model name can be an
    AVX-512 VNNI host one day and an AVX2-only virtual machine the next)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def write_rows(name: str, rows: List[Dict[str, object]], out_dir: Optional[Path] = None) -> Path:
    """Append rows as JSON lines to ``<out_dir>/<name>.jsonl``; returns the path."""
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.jsonl"
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    return path


def markdown_table(rows: List[Dict[str, object]], columns: List[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return "" if v is None else str(v)

    body = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(b, widths)) + " |" for b in body]
    return "\n".join(lines)


def set_cpu_threads_from_env() -> None:
    if "ZSQ_BENCH_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["ZSQ_BENCH_THREADS"]))
