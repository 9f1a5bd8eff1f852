"""Integer GEMM on the GPU: zsq_engine's Triton W8A8 / W4A8 kernels vs cuBLAS bf16/fp16 and
torch._int_mm.

    python -m benchmarks.int_gemm --device cuda            # all shapes, rows appended to results
    python -m benchmarks.int_gemm --device cuda --quick    # one square and one small-M shape
    python -m benchmarks.int_gemm --list                   # print the cases (runs anywhere)

Shapes: 4096^3 and 8192^3, and M in {1, 16, 128, 2048} with N = K = 4096 (weight [N, K]).
W4A8 (packed int4 weight) at M <= 16, where the GEMM is weight-bandwidth bound, vs bf16.
Reported: median time (triton.testing.do_bench through benchmarks.harness), TOPS
(2*M*N*K / time), fraction of the dense peak of the unit used (H100 SXM: INT8 1979 TOPS,
BF16/FP16 989 TFLOPS), GB/s for the minimum traffic (operands read once, output written once)
and the speed-up over cuBLAS bf16. Every kernel's result is checked once before timing
(int8 paths: torch.equal against torch._int_mm or an fp64 matmul). torch._int_mm needs M > 16
and is skipped below that. Rows go to benchmarks/results/int_gemm.jsonl.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Tuple

import torch

from benchmarks import harness

# Dense datasheet peaks (TOPS / TFLOPS) by device-name substring: (int8, bf16/fp16).
PEAKS = {"H100 SXM": (1979.0, 989.0), "H100 PCIe": (1513.0, 756.0), "H100 NVL": (1671.0, 835.0),
         "H100": (1979.0, 989.0), "H200": (1979.0, 989.0)}

SQUARE = [(4096, 4096, 4096), (8192, 8192, 8192)]
SMALL_M = [(m, 4096, 4096) for m in (1, 16, 128, 2048)]
W4A8_M = [(1, 4096, 4096), (16, 4096, 4096)]
QUICK = [(4096, 4096, 4096), (16, 4096, 4096)]


def peaks(device: torch.device) -> Tuple[Optional[float], Optional[float]]:
    name = torch.cuda.get_device_name(device)
    for key, value in PEAKS.items():
        if key in name:
            return value
    return None, None


def cases(quick: bool) -> List[Tuple[str, Tuple[int, int, int]]]:
    if quick:
        return [("w8a8", s) for s in QUICK] + [("w4a8", QUICK[1])]
    return [("w8a8", s) for s in SQUARE + SMALL_M] + [("w4a8", s) for s in W4A8_M]


def _bench_shape(kind: str, shape, device, peak_int8, peak_bf16, env) -> List[Dict[str, object]]:
    from zsq_engine.kernels import int_gemm
    from zsq_engine.ops.int4_pack.reference import pack_int4

    m, n, k = shape
    ops = 2.0 * m * n * k
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device=device)
    if kind == "w4a8":
        w_int = torch.randint(-8, 8, (n, k), dtype=torch.int8, device=device)
        w_op = pack_int4(w_int)
        zsq = lambda: int_gemm.w4a8_gemm(a, w_op)  # noqa: E731
        w_bytes = w_op.numel()
    else:
        w_int = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=device)
        w_op = w_int
        zsq = lambda: int_gemm.int8_gemm(a, w_op)  # noqa: E731
        w_bytes = w_op.numel()
    # correctness once, on random data (never zeros)
    ref = (a.double() @ w_int.double().t()).to(torch.int32) if m * n * k <= 2 ** 33 else None
    got = zsq()
    if ref is not None and not torch.equal(got, ref):
        raise AssertionError(f"{kind} {shape}: zsq result differs from the fp64 reference")

    a_bf, w_bf = a.to(torch.bfloat16), w_int.to(torch.bfloat16)
    a_h, w_h = a.half(), w_int.half()
    impls = [(f"zsq {kind}", zsq, "int8", m * k + w_bytes + 4 * m * n),
             ("cublas bf16", lambda: a_bf @ w_bf.t(), "bf16", 2 * (m * k + n * k + m * n)),
             ("cublas fp16", lambda: a_h @ w_h.t(), "bf16", 2 * (m * k + n * k + m * n))]
    if kind == "w8a8" and m > 16:
        w_t = w_int.t()  # [K, N] view of the [N, K] weight: the layout torch._int_mm is fastest with
        if not torch.equal(torch._int_mm(a, w_t), got):
            raise AssertionError(f"{shape}: zsq int8 GEMM differs from torch._int_mm")
        impls.append(("torch._int_mm", lambda: torch._int_mm(a, w_t), "int8", m * k + n * k + 4 * m * n))
    rows = []
    bf16_time = None
    for name, fn, unit, nbytes in impls:
        seconds = harness.time_fn(fn, device)
        if name == "cublas bf16":
            bf16_time = seconds
        peak = peak_int8 if unit == "int8" else peak_bf16
        tops = ops / seconds / 1e12
        rows.append(dict(env, bench="int_gemm", kind=kind, impl=name, M=m, N=n, K=k, time_ms=seconds * 1e3,
                         tops=tops, peak_tops=peak, frac_peak=(tops / peak) if peak else None,
                         gbps=nbytes / seconds / 1e9))
    for r in rows:
        r["speedup_vs_bf16"] = bf16_time / (r["time_ms"] / 1e3) if bf16_time else None
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="two shapes only")
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    parser.add_argument("--no-write", action="store_true", help="do not append rows to the results file")
    parser.add_argument("--out-dir", default=None, help="results directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    todo = cases(args.quick)
    if args.list:
        for kind, shape in todo:
            print(kind, "M=%d N=%d K=%d" % shape)
        return 0
    if args.device != "cuda" or not torch.cuda.is_available():
        print("benchmarks.int_gemm times GPU kernels: it needs --device cuda on a machine with a CUDA GPU "
              "(the Triton interpreter is for tests, not timings).", file=sys.stderr)
        return 0 if args.device == "cpu" else 2
    device = torch.device("cuda")
    env = harness.environment(device)
    peak_int8, peak_bf16 = peaks(device)
    rows: List[Dict[str, object]] = []
    for kind, shape in todo:
        rows += _bench_shape(kind, shape, device, peak_int8, peak_bf16, env)
        print(f"done {kind} {shape}", flush=True)
    if not args.no_write:
        path = harness.write_rows("int_gemm", rows, args.out_dir)
        print(f"rows appended to {path}")
    print(harness.markdown_table(rows, ["kind", "impl", "M", "N", "K", "time_ms", "tops", "frac_peak", "gbps",
                                        "speedup_vs_bf16"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
