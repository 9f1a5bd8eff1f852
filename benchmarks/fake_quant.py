"""Forward+backward of LSQ fake-quant: zsq_engine vs PyTorch's native learnable op vs eager LSQ.

    python -m benchmarks.fake_quant --device cpu            # CPU rows (C++ extension)
    python -m benchmarks.fake_quant --device cuda           # GPU rows (Triton kernels)
    python -m benchmarks.fake_quant --device cpu --quick    # small shapes, a smoke run

Baselines, side by side in one run:
* ``native``: ``torch._fake_quantize_learnable_per_tensor_affine`` / ``_per_channel_affine``
  (host sync per call, full-size gradient tensors reduced afterwards);
* ``eager``: LSQ written with torch ops as the research repos do (round/grad-scale tricks).
Reported: median time, achieved bandwidth for the minimum traffic of fwd+bwd (read x, write y,
read x and dy, write dx: 5 tensor passes, 20 bytes/element in fp32), its fraction of the
device's DRAM bandwidth (datasheet on GPU, a measured copy on CPU), and the speed-up ratios.
Rows are appended to benchmarks/results/fake_quant.jsonl.
"""
from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Optional, Tuple

import torch

from benchmarks import harness
from zsq_engine import ops

# (label, shape, axis) — ResNet-50 conv weights per output channel, a big activation per tensor
CASES: List[Tuple[str, Tuple[int, ...], Optional[int]]] = [
    ("act 64x256x56x56 per-tensor", (64, 256, 56, 56), None),
    ("w 512x256x3x3 per-channel", (512, 256, 3, 3), 0),
    ("w 2048x512x1x1 per-channel", (2048, 512, 1, 1), 0),
    ("w 256x64x1x1 per-channel", (256, 64, 1, 1), 0),
    ("act 64x256x56x56 per-channel(1)", (64, 256, 56, 56), 1),
]
QUICK_CASES = [("act 8x64x28x28 per-tensor", (8, 64, 28, 28), None), ("w 256x64x3x3 per-channel", (256, 64, 3, 3), 0)]


def eager_lsq(x, scale, zero_point, qmin, qmax, axis, grad_factor):
    """LSQ+ as written in the research code (straight-through rounding and gradient scaling)."""
    def round_pass(v):
        return (v.round() - v).detach() + v

    def grad_scale(v, g):
        return (v - v * g).detach() + v * g

    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    s = grad_scale(scale, grad_factor).reshape(shape)
    z = grad_scale(round_pass(zero_point).clamp(qmin, qmax), grad_factor).reshape(shape)
    q = torch.clamp(round_pass(x / s) + z, qmin, qmax)
    return (q - z) * s


def native_lsq(x, scale, zero_point, qmin, qmax, axis, grad_factor):
    if axis is None:
        return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero_point, qmin, qmax, grad_factor)
    return torch._fake_quantize_learnable_per_channel_affine(x, scale, zero_point, axis, qmin, qmax, grad_factor)


def zsq_lsq(x, scale, zero_point, qmin, qmax, axis, grad_factor):
    return ops.lsq_fake_quant(x, scale, zero_point, qmin, qmax, axis=axis, grad_factor=grad_factor)


IMPLS: Dict[str, Callable] = {"zsq": zsq_lsq, "native": native_lsq, "eager": eager_lsq}


def run_case(label, shape, axis, device, bits=4) -> List[Dict]:
    qmin, qmax = 0, 2 ** bits - 1
    channels = 1 if axis is None else shape[axis]
    x = torch.randn(shape, device=device).requires_grad_()
    dy = torch.randn(shape, device=device)
    scale = torch.full((channels,), 0.1, device=device, requires_grad=True)
    zp = torch.full((channels,), 7.0, device=device, requires_grad=True)
    grad_factor = 1.0 / (x.numel() * qmax) ** 0.5
    numel = x.numel()
    bytes_moved = 20 * numel
    peak = harness.peak_bandwidth_gbps(device)
    times = {}
    for name, fn in IMPLS.items():
        def step(fn=fn):
            y = fn(x, scale, zp, qmin, qmax, axis, grad_factor)
            return torch.autograd.grad(y, (x, scale, zp), dy)
        times[name] = harness.time_fn(step, device)
    rows = []
    env = harness.environment(device)
    for name, seconds in times.items():
        gbps = bytes_moved / seconds / 1e9
        rows.append({**env, "benchmark": "lsq_fake_quant fwd+bwd", "case": label, "shape": list(shape),
                     "axis": axis, "dtype": "float32", "bits": bits, "impl": name,
                     "backend": ops.dispatch.select("lsq_backward", device)[0] if name == "zsq" else None,
                     "median_ms": seconds * 1e3, "gbps": gbps, "peak_gbps": peak,
                     "frac_of_peak_bw": gbps / peak if peak else None,
                     "speedup_vs_native": times["native"] / seconds, "speedup_vs_eager": times["eager"] / seconds})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not append result rows")
    args = parser.parse_args(argv)
    harness.set_cpu_threads_from_env()
    device = torch.device(args.device)
    rows = []
    for label, shape, axis in (QUICK_CASES if args.quick else CASES):
        rows += run_case(label, shape, axis, device)
        print(harness.markdown_table(rows[-3:], ["case", "impl", "backend", "median_ms", "gbps", "frac_of_peak_bw",
                                                 "speedup_vs_native", "speedup_vs_eager"]), flush=True)
    if not args.no_write:
        print("rows appended to", harness.write_rows("fake_quant", rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
