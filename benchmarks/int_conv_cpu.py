"""CPU int8 conv / GEMM: every distinct conv of ResNet-18 and its FC layer, zsq_engine's C++
kernel vs torch FP32 (oneDNN) and torch.ao's x86 int8 engine, side by side in one run.

    python -m benchmarks.int_conv_cpu                      # batch 1 and 16, rows appended
    ZSQ_BENCH_THREADS=1 python -m benchmarks.int_conv_cpu  # one thread for every engine
    python -m benchmarks.int_conv_cpu --quick              # smoke run (64x64 input, batch 1), writes nothing

Per layer, what an integer runtime runs:

* ``zsq``: ``_C.int_conv2d_nhwc_cpu`` (``_C.int_gemm_cpu`` for the FC) with the weight packed
  once, int8 NHWC activations and the fused epilogue (per-channel weight scale x activation
  scale, bias, requantised int8 output); the launcher is called directly, as the runtime does,
  so Python validation is not timed. The micro-kernel is the best this CPU has unless
  ``ZSQ_CPU_INT_ISA`` forces one.
* ``fp32``: ``F.conv2d`` with bias on channels_last fp32 tensors (oneDNN), ``F.linear`` for FC.
* ``ao``: ``torch.ao.nn.quantized.Conv2d`` / ``Linear`` with ``torch.backends.quantized.engine
  = 'x86'``, per-channel qint8 weights, quint8 channels_last input, quint8 output.

All three compute the same integer problem (same int8 weights and inputs, scales chosen so the
outputs are not saturated); before timing, zsq's output is checked against the float64
reference op (equal up to a requantisation tie) and torch.ao's and FP32's against zsq's (within
one output step; on a CPU without VNNI torch.ao's largest deviation is recorded as ``ao_max_diff``
instead, see ``Problem.verify``). Reported per layer and for the layer set (each distinct layer once) and the
whole network (each layer times its count in ResNet-18): median times, int8 TOPS
(2 * MACs / time) and its fraction of the CPU's int8 limit (one core's measured AVX-512 VNNI
rate, ``_C.int8_peak_gmacs_cpu``, times the threads), and the speed-ups ``zsq`` over ``fp32``
and over ``ao``.
Rows are appended to benchmarks/results/int_conv_cpu.jsonl.
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, NamedTuple

import torch
import torch.nn.functional as F

from benchmarks import harness
from zsq_engine import ops
from zsq_engine._ext import require_extension
from zsq_engine.ops.int_gemm import cpu as int_gemm_cpu
from zsq_engine.opspec.epilogue import Epilogue
from zsq_engine.evaluation import progress


class Layer(NamedTuple):
    name: str
    c: int      # input channels
    o: int      # output channels
    k: int      # kernel size (0: the FC GEMM)
    stride: int
    hw: int     # input height = width at 224x224
    count: int  # occurrences in ResNet-18


# Every distinct conv of ResNet-18 (torchvision layout) at 224x224, and the FC layer.
RESNET18 = [
    Layer("conv1_7x7_s2", 3, 64, 7, 2, 224, 1),
    Layer("layer1_3x3", 64, 64, 3, 1, 56, 4),
    Layer("layer2_3x3_s2", 64, 128, 3, 2, 56, 1),
    Layer("layer2_3x3", 128, 128, 3, 1, 28, 3),
    Layer("layer2_down_1x1_s2", 64, 128, 1, 2, 56, 1),
    Layer("layer3_3x3_s2", 128, 256, 3, 2, 28, 1),
    Layer("layer3_3x3", 256, 256, 3, 1, 14, 3),
    Layer("layer3_down_1x1_s2", 128, 256, 1, 2, 28, 1),
    Layer("layer4_3x3_s2", 256, 512, 3, 2, 14, 1),
    Layer("layer4_3x3", 512, 512, 3, 1, 7, 3),
    Layer("layer4_down_1x1_s2", 256, 512, 1, 2, 14, 1),
    Layer("fc", 512, 1000, 0, 1, 1, 1),
]

ACT_SCALE = 0.05
OUT_SCALE = 1.0


class Problem:
    """One layer at one batch: the int8 operands, their float twins, and the three engines."""

    def __init__(self, layer: Layer, batch: int, scale_hw: float):
        self.layer, self.batch = layer, batch
        self.exact_ao = "avx512_vnni" in require_extension().int_isas_cpu()
        self.ao_max_diff = 0
        g = torch.Generator().manual_seed(0)
        l = layer
        hw = max(l.k, round(l.hw * scale_hw)) if l.k else 1
        self.hw = hw
        pad = l.k // 2
        if l.k:
            x = torch.randint(-128, 128, (batch, hw, hw, l.c), generator=g).to(torch.int8)
            w = torch.randint(-127, 128, (l.o, l.k, l.k, l.c), generator=g).to(torch.int8)
            self.oh = (hw + 2 * pad - l.k) // l.stride + 1
            self.m = batch * self.oh * self.oh
            kdim = l.k * l.k * l.c
        else:
            x = torch.randint(-128, 128, (batch, l.c), generator=g).to(torch.int8)
            w = torch.randint(-127, 128, (l.o, l.c), generator=g).to(torch.int8)
            self.m, kdim = batch, l.c
        self.macs = self.m * l.o * kdim
        # per-channel weight scales that keep the output std near a few output steps
        self.sw = (torch.rand(l.o, generator=g) + 0.5) * (4.0 / (ACT_SCALE * 74.0 * 73.0 * kdim ** 0.5))
        self.bias = torch.randn(l.o, generator=g) * 0.5
        self.x, self.w, self.pad = x, w, pad
        self.ep = Epilogue(weight_scale=self.sw, act_scale=ACT_SCALE, bias=self.bias, out_dtype=torch.int8,
                           out_scale=OUT_SCALE)
        self._build_zsq()
        self._build_fp32()
        self._build_ao()

    # ---------------------------------------------------------------- engines
    def _build_zsq(self):
        _C = require_extension()
        l = self.layer
        packed = int_gemm_cpu.pack_weight(self.w)  # once, as the runtime does at load time
        bound = int_gemm_cpu.bind_epilogue(self.ep)  # once, as the runtime does
        isa = int_gemm_cpu.isa_name()
        if l.k:
            geo = (l.stride, l.stride, self.pad, self.pad, 1, 1, 1, 0)
            self.zsq = lambda: _C.int_conv2d_nhwc_cpu(self.x, packed.panels, packed.colsum, l.o, l.k, l.k, *geo,
                                                      bound, isa=isa)
        else:
            a_format = "int8" if self.x.dtype == torch.int8 else "uint8"
            self.zsq = lambda: _C.int_gemm_cpu(self.x, a_format, l.c, packed.panels, packed.colsum, l.o, bound,
                                               isa=isa)

    def _build_fp32(self):
        l = self.layer
        wf = self.w.float() * self.sw.reshape(-1, *([1] * (self.w.dim() - 1)))
        if l.k:
            xf = (self.x.float() * ACT_SCALE).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
            wf = wf.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
            self.fp32 = lambda: F.conv2d(xf, wf, self.bias, l.stride, self.pad)
        else:
            xf = self.x.float() * ACT_SCALE
            self.fp32 = lambda: F.linear(xf, wf, self.bias)

    def _build_ao(self):
        import warnings

        import torch.ao.nn.quantized as nnq

        # torch 2.13 deprecates quantized tensors; they are still the x86 int8 engine under test
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")

        l = self.layer
        w_ao = torch.quantize_per_channel(
            (self.w.float() * self.sw.reshape(-1, *([1] * (self.w.dim() - 1)))).permute(
                *((0, 3, 1, 2) if l.k else (0, 1))).contiguous(),
            self.sw.double(), torch.zeros(l.o, dtype=torch.long), 0, torch.qint8)
        # quint8 input with zero point 128 holds exactly the int8 values of x
        xf = self.x.float() * ACT_SCALE
        if l.k:
            xf = xf.permute(0, 3, 1, 2)
        xq = torch.quantize_per_tensor(xf, ACT_SCALE, 128, torch.quint8)
        if l.k:
            xq = xq.contiguous(memory_format=torch.channels_last)
            mod = nnq.Conv2d(l.c, l.o, l.k, stride=l.stride, padding=self.pad)
        else:
            mod = nnq.Linear(l.c, l.o)
        mod.set_weight_bias(w_ao, self.bias)
        mod.scale, mod.zero_point = OUT_SCALE, 128
        self.ao = lambda: mod(xq)

    # ---------------------------------------------------------------- checks
    def verify(self) -> None:
        """zsq vs the float64 reference op, then torch.ao and FP32 vs zsq, once."""
        l = self.layer
        ours = self.zsq()
        with ops.use_backend("reference"):
            if l.k:
                ref = ops.qconv2d_nhwc(self.x, self.w, l.stride, self.pad, epilogue=self.ep)
            else:
                ref = ops.qgemm(self.x, self.w, self.ep)
        diff = (ours.int() - ref.int()).abs()
        if diff.max() > 1 or (diff > 0).float().mean() > 1e-3:
            raise AssertionError(f"{l.name}: zsq differs from the reference op (max {diff.max().item()})")
        ao = self.ao().int_repr().int() - 128
        fp = self.fp32() / OUT_SCALE
        if l.k:
            ao, fp = ao.permute(0, 2, 3, 1), fp.permute(0, 2, 3, 1)
        ours_i = ours.int()
        inside = ours_i.abs() < 127  # saturated outputs may differ in the float baselines
        ao_diff = (ao - ours_i).abs()[inside]
        fp_diff = (fp - ours_i.float()).abs()[inside]
        self.ao_max_diff = int(ao_diff.max()) if ao_diff.numel() else 0
        # Without VNNI, torch.ao's x86 engine multiplies with vpmaddubsw, whose int16 pair sums
        # saturate for full-range 8-bit operands (its qconfigs reduce the activation range for
        # that reason): there its output is recorded (ao_max_diff), not required to match.
        if self.ao_max_diff > 1 and self.exact_ao:
            raise AssertionError(f"{l.name}: torch.ao output differs from zsq by {self.ao_max_diff} steps")
        if fp_diff.numel() and fp_diff.max() > 0.51 + 1e-3:
            raise AssertionError(f"{l.name}: FP32 output differs from zsq by {fp_diff.max().item():.3f} steps")


def bench(layers: List[Layer], batches: List[int], scale_hw: float, warmup: int, repeats: int) -> List[Dict]:
    device = torch.device("cpu")
    env = harness.environment(device)
    torch.backends.quantized.engine = "x86"
    _C = require_extension()
    isa = os.environ.get(int_gemm_cpu.ISA_ENV, "auto") or "auto"
    isa_used = _C.int_isas_cpu()[-1] if isa == "auto" else isa
    # hardware limit: one core's measured VNNI rate times the threads (None without VNNI)
    peak_gmacs = _C.int8_peak_gmacs_cpu(0.3) * torch.get_num_threads()
    peak_tops = 2 * peak_gmacs / 1e3 if peak_gmacs > 0 else None
    rows = []
    work = [(l, b) for b in batches for l in layers]
    for layer, batch in progress(work, desc="int_conv_cpu", total=len(work)):
        p = Problem(layer, batch, scale_hw)
        p.verify()
        times = {name: harness.time_cpu(getattr(p, name), warmup=warmup, repeats=repeats)
                 for name in ("zsq", "fp32", "ao")}
        rows.append(dict(env, bench="int_conv_cpu", layer=layer.name, batch=batch, count=layer.count,
                         c=layer.c, o=layer.o, k=layer.k, stride=layer.stride, hw=p.hw, m=p.m, macs=p.macs,
                         zsq_ms=times["zsq"] * 1e3, fp32_ms=times["fp32"] * 1e3, ao_ms=times["ao"] * 1e3,
                         zsq_tops=2 * p.macs / times["zsq"] / 1e12, peak_tops=peak_tops,
                         frac_peak=(2 * p.macs / times["zsq"] / 1e12 / peak_tops) if peak_tops else None,
                         vs_fp32=times["fp32"] / times["zsq"], vs_ao=times["ao"] / times["zsq"],
                         ao_max_diff=p.ao_max_diff, isa=isa_used, threads=torch.get_num_threads(),
                         repeats=repeats))
    for batch in batches:
        per = [r for r in rows if r["batch"] == batch]
        for total, weight in (("total_set", lambda r: 1), ("total_resnet18", lambda r: r["count"])):
            t = {k: sum(weight(r) * r[f"{k}_ms"] for r in per) for k in ("zsq", "fp32", "ao")}
            macs = sum(weight(r) * r["macs"] for r in per)
            rows.append(dict(env, bench="int_conv_cpu", layer=total, batch=batch, macs=macs,
                             zsq_ms=t["zsq"], fp32_ms=t["fp32"], ao_ms=t["ao"],
                             zsq_tops=2 * macs / (t["zsq"] / 1e3) / 1e12, peak_tops=peak_tops,
                             frac_peak=(2 * macs / (t["zsq"] / 1e3) / 1e12 / peak_tops) if peak_tops else None,
                             vs_fp32=t["fp32"] / t["zsq"], vs_ao=t["ao"] / t["zsq"],
                             isa=isa_used, threads=torch.get_num_threads(), repeats=repeats))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 64x64 input, batch 1, one repeat; writes nothing")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes (default 1,16)")
    parser.add_argument("--layers", default="", help="comma-separated layer names to run (default: all)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per engine (median is reported)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    harness.set_cpu_threads_from_env()
    try:
        batches = [int(b) for b in args.batches.split(",") if b]
    except ValueError:
        parser.error(f"--batches must be comma-separated ints, got {args.batches!r}")
    if not batches or min(batches) < 1:
        parser.error("--batches needs at least one positive batch size")
    names = [n for n in args.layers.split(",") if n]
    unknown = sorted(set(names) - {l.name for l in RESNET18})
    if unknown:
        parser.error(f"unknown --layers {unknown}; known: {', '.join(l.name for l in RESNET18)}")
    layers = [l for l in RESNET18 if not names or l.name in names]
    if args.quick:
        rows = bench(layers, [1], 64 / 224, warmup=1, repeats=1)
    else:
        rows = bench(layers, batches, 1.0, warmup=2, repeats=args.repeats)
    cols = ["layer", "batch", "m", "zsq_ms", "fp32_ms", "ao_ms", "zsq_tops", "frac_peak", "vs_fp32", "vs_ao", "ao_max_diff"]
    print(harness.markdown_table(rows, cols))
    if not (args.quick or args.no_write):
        print("rows appended to", harness.write_rows("int_conv_cpu", rows))


if __name__ == "__main__":
    main()
