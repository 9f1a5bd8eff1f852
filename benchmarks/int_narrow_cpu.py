"""W8A8 vs W4A8 vs W4A4 on the CPU integer conv / GEMM, per ResNet-18 layer, interleaved in one
process (the AVX2 narrow-weight path, docs/kernels_int.md "Narrow weights").

    ZSQ_CPU_INT_ISA=avx2 python -m benchmarks.int_narrow_cpu            # batch 1, 1 thread
    python -m benchmarks.int_narrow_cpu --rounds 3 --calls 5 --layers layer4_3x3,fc

Per layer the same shape runs with four operand sets through the packed-weight launchers the
runtime calls (requantised int8 output, as benchmarks/int_conv_cpu.py):

* ``w8a8``: full-range int8 weights (every panel takes the vpmaddwd kernels on AVX2);
* ``w7a8`` / ``w6a8``: int8 weights in [-64, 63] / [-32, 31] (the narrow path with int16 runs
  of 1 / 2 k-groups);
* ``w4a8_wide``: int4 weights with ``ZSQ_AVX2_NARROW=0`` (the vpmaddwd kernels: what W4A8 cost
  before the narrow path);
* ``w4a8``: int4 weights, int8 activations (the vpmaddubsw kernel);
* ``w4a4``: int4 weights, activations with 4-bit codes (int8 bytes in [-8, 7]; the conv takes
  int8 / uint8 input, so on the CPU W4A4 conv is W4A8 arithmetic on 4-bit codes).

Each output is checked against the float64 reference op first. The variants alternate call
batches in ``--rounds`` rounds of ``--calls`` calls; the best call and the median are reported.
Nothing is written: the table goes to docs/ by hand.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks.int_conv_cpu import ACT_SCALE, OUT_SCALE, RESNET18
from zsq_engine import ops
from zsq_engine._ext import require_extension
from zsq_engine.ops.int_gemm import cpu as int_gemm_cpu
from zsq_engine.opspec.epilogue import Epilogue

VARIANTS = ("w8a8", "w7a8", "w6a8", "w4a8_wide", "w4a8", "w4a4")


def _operands(layer, variant, g):
    l = layer
    wlo, whi = {"w8a8": (-127, 127), "w7a8": (-64, 63), "w6a8": (-32, 31)}.get(variant, (-8, 7))
    alo, ahi = (-8, 7) if variant == "w4a4" else (-128, 127)
    if l.k:
        x = torch.randint(alo, ahi + 1, (1, l.hw, l.hw, l.c), generator=g).to(torch.int8)
        w = torch.randint(wlo, whi + 1, (l.o, l.k, l.k, l.c), generator=g).to(torch.int8)
        kdim = l.k * l.k * l.c
    else:
        x = torch.randint(alo, ahi + 1, (1, l.c), generator=g).to(torch.int8)
        w = torch.randint(wlo, whi + 1, (l.o, l.c), generator=g).to(torch.int8)
        kdim = l.c
    spread = (ahi - alo) / 3.5 * (whi - wlo) / 3.5 * kdim ** 0.5
    sw = (torch.rand(l.o, generator=g) + 0.5) * (4.0 / (ACT_SCALE * spread))
    ep = Epilogue(weight_scale=sw, act_scale=ACT_SCALE, bias=torch.randn(l.o, generator=g) * 0.5,
                  out_dtype=torch.int8, out_scale=OUT_SCALE)
    return x, w, ep


def _runner(layer, variant, g):
    _C = require_extension()
    l = layer
    x, w, ep = _operands(layer, variant, g)
    packed = int_gemm_cpu.pack_weight(w)
    bound = int_gemm_cpu.bind_epilogue(ep)
    isa = int_gemm_cpu.isa_name()
    pad = l.k // 2
    if l.k:
        call = lambda: _C.int_conv2d_nhwc_cpu(x, packed.panels, packed.colsum, l.o, l.k, l.k, l.stride, l.stride,
                                              pad, pad, 1, 1, 1, 0, bound, isa=isa)
        with ops.use_backend("reference"):
            ref = ops.qconv2d_nhwc(x, w, l.stride, pad, epilogue=ep)
        macs = ref.shape[1] * ref.shape[2] * l.o * l.k * l.k * l.c
    else:
        call = lambda: _C.int_gemm_cpu(x, "int8", l.c, packed.panels, packed.colsum, l.o, bound, isa=isa)
        with ops.use_backend("reference"):
            ref = ops.qgemm(x, w, ep)
        macs = l.o * l.c
    if variant == "w4a8_wide":
        inner = call

        def call():
            os.environ["ZSQ_AVX2_NARROW"] = "0"
            try:
                return inner()
            finally:
                del os.environ["ZSQ_AVX2_NARROW"]
    diff = (call().int() - ref.int()).abs()
    if diff.max() > 1 or (diff > 0).float().mean() > 1e-3:
        raise AssertionError(f"{l.name} {variant}: differs from the reference op (max {diff.max().item()})")
    return call, macs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.pop("ZSQ_AVX2_NARROW", None)
    wanted = [name for name in args.layers.split(",") if name]
    unknown = sorted(set(wanted) - {l.name for l in RESNET18})
    if unknown:
        parser.error(f"--layers: unknown layer(s) {unknown}; expected names from {[l.name for l in RESNET18]}")
    layers = [l for l in RESNET18 if not wanted or l.name in wanted]
    g = torch.Generator().manual_seed(0)
    print(f"threads {torch.get_num_threads()}, isa {os.environ.get(int_gemm_cpu.ISA_ENV, 'auto')}, "
          f"best (median) G MAC/s of {args.rounds} x {args.calls} calls")
    print("| layer | " + " | ".join(VARIANTS) + " | w4a8 / w8a8 | w4a8 / w4a8_wide |")
    total = {v: [0.0, 0.0] for v in VARIANTS}
    for l in layers:
        runs = {v: _runner(l, v, g) for v in VARIANTS}
        samples = {v: [] for v in VARIANTS}
        for fn, _ in runs.values():
            fn()
        for _ in range(args.rounds):
            for v, (fn, _) in runs.items():
                for _ in range(args.calls):
                    t0 = time.perf_counter()
                    fn()
                    samples[v].append(time.perf_counter() - t0)
        best = {v: min(s) for v, s in samples.items()}
        med = {v: statistics.median(s) for v, s in samples.items()}
        macs = runs["w8a8"][1]
        for v in VARIANTS:
            total[v][0] += l.count * best[v]
            total[v][1] += l.count * med[v]
        cells = " | ".join(f"{macs / best[v] / 1e9:.1f} ({macs / med[v] / 1e9:.1f})" for v in VARIANTS)
        print(f"| {l.name} | {cells} | {best['w8a8'] / best['w4a8']:.2f} ({med['w8a8'] / med['w4a8']:.2f}) | "
              f"{best['w4a8_wide'] / best['w4a8']:.2f} ({med['w4a8_wide'] / med['w4a8']:.2f}) |")
    cells = " | ".join(f"{total[v][0] * 1e3:.1f} ms ({total[v][1] * 1e3:.1f})" for v in VARIANTS)
    print(f"| ResNet-18 layers x count | {cells} | {total['w8a8'][0] / total['w4a8'][0]:.2f} | "
          f"{total['w4a8_wide'][0] / total['w4a8'][0]:.2f} |")


if __name__ == "__main__":
    main()
