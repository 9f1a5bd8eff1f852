"""Static GPU report (CPU only): resources of every compiled kernel x config and roofline bounds.

``python -m benchmarks.gpu_static`` compiles every GPU-path Triton kernel for sm_90a and sm_80
(``zsq_engine.kernels.aot``, the same compiles as tests/test_triton_aot.py), then writes
``docs/gpu.md`` and ``benchmarks/results/gpu_static.json``: per kernel x config the registers
per thread, spills, shared memory, the MMA instruction and the resulting occupancy on an H100
(warps per SM from the published per-SM limits), and for the headline shapes the bytes moved
and operations done against H100 / H200 DRAM bandwidth and int8 / bf16 peaks: a roofline time
bound, an ESTIMATE from datasheet numbers, never a measurement.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "gpu.md"
JSON_OUT = ROOT / "benchmarks" / "results" / "gpu_static.json"

# H100 SXM5 per-SM limits (CUDA C++ Programming Guide, compute capability 9.0): 64K 32-bit
# registers, 64 resident warps, 32 resident blocks, 228 KB shared memory per SM of which a block
# may use 227 KB; the system reserves 1 KB per resident block. Registers are allocated per warp
# in units of 256.
H100_SM = {"regs": 65536, "warps": 64, "blocks": 32, "smem": 228 * 1024, "smem_reserved_per_block": 1024,
           "reg_unit": 256}
# Datasheet peaks (dense): DRAM bandwidth, int8 tensor-core ops, bf16 tensor-core flops.
GPUS = {
    "H100 SXM": {"dram_Bps": 3.35e12, "int8_ops": 1979e12, "bf16_flops": 989e12},
    "H200": {"dram_Bps": 4.8e12, "int8_ops": 1979e12, "bf16_flops": 989e12},
}


def h100_occupancy(registers: int, warps: int, shared: int) -> Dict[str, object]:
    """Resident blocks and warps per H100 SM for one kernel, and what limits them."""
    unit = H100_SM["reg_unit"]
    regs_per_warp = -(-max(registers, 1) * 32 // unit) * unit
    by = {
        "registers": H100_SM["regs"] // (regs_per_warp * warps),
        "warps": H100_SM["warps"] // warps,
        "blocks": H100_SM["blocks"],
        "shared memory": H100_SM["smem"] // (shared + H100_SM["smem_reserved_per_block"]),
    }
    blocks = min(by.values())
    limiter = min(by, key=by.get)
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * warps, "limited_by": limiter}


# ----------------------------------------------------------------------------- roofline

def _bound(ops: float, nbytes: float, gpu: Dict[str, float], peak_key: str) -> Dict[str, float]:
    t_compute = ops / gpu[peak_key]
    t_memory = nbytes / gpu["dram_Bps"]
    return {"us": max(t_compute, t_memory) * 1e6, "bound": "compute" if t_compute >= t_memory else "memory"}


def resnet50_convs(batch: int, size: int = 224) -> List[Dict[str, int]]:
    """(C, O, k, stride, H_in, H_out, residual) of every conv of a torchvision ResNet-50 (v1.5:
    stride on the 3x3), batch ``batch``."""
    convs = []
    h = size // 2
    convs.append(dict(C=3, O=64, k=7, s=2, hin=size, hout=h, res=0))
    h //= 2  # max pool
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            s = stride if b == 0 else 1
            hout = h // s
            convs.append(dict(C=cin, O=width, k=1, s=1, hin=h, hout=h, res=0))
            convs.append(dict(C=width, O=width, k=3, s=s, hin=h, hout=hout, res=0))
            convs.append(dict(C=width, O=4 * width, k=1, s=1, hin=hout, hout=hout, res=1))
            if b == 0:
                convs.append(dict(C=cin, O=4 * width, k=1, s=s, hin=h, hout=hout, res=0))
            cin = 4 * width
            h = hout
    for c in convs:
        c["B"] = batch
    return convs


def headline_estimates() -> List[Dict[str, object]]:
    rows = []

    def add(name, ops, nbytes, peak_key, note, baseline=None):
        row = {"workload": name, "ops": ops, "bytes": nbytes, "peak": peak_key, "note": note}
        for gpu_name, gpu in GPUS.items():
            row[gpu_name] = _bound(ops, nbytes, gpu, peak_key)
            if baseline is not None:
                row[gpu_name + " baseline"] = _bound(baseline[0], baseline[1], gpu, baseline[2])
        rows.append(row)

    n = 8192
    ops = 2.0 * n ** 3
    add("int8 GEMM 8192^3 (int32 out)", ops, 2 * n * n + 4 * n * n, "int8_ops",
        "A + B int8 read once, C int32 written", baseline=(ops, 3 * 2 * n * n, "bf16_flops"))
    for m in (1, 2, 4, 8, 16):
        k = nn = 8192
        add(f"W4A8 GEMM M={m}, K=N=8192 (fp16 out)", 2.0 * m * nn * k, nn * k / 2 + m * k + 2 * m * nn, "int8_ops",
            "packed int4 weight read once", baseline=(2.0 * m * nn * k, 2 * nn * k + 2 * m * k + 2 * m * nn,
                                                      "bf16_flops"))
    numel = 64 * 256 * 56 * 56
    for dtype, size in (("fp32", 4), ("bf16", 2)):
        # forward reads x, writes y; LSQ backward reads dy and x, writes dx (partials negligible)
        add(f"LSQ fake-quant [64,256,56,56] {dtype} fwd+bwd", 0.0, 5 * size * numel, "bf16_flops",
            "5 tensor passes: fwd read x + write y, bwd read dy, x + write dx")
    for batch in (256, 1):
        layers = []
        for c in resnet50_convs(batch):
            ops = 2.0 * c["B"] * c["hout"] ** 2 * c["O"] * c["C"] * c["k"] ** 2
            act = c["B"] * (c["hin"] ** 2 * c["C"] + c["hout"] ** 2 * c["O"] * (1 + c["res"]))
            layers.append((ops, act, c["O"] * c["C"] * c["k"] ** 2))
        ops = sum(x[0] for x in layers)
        nbytes = sum(x[1] + x[2] for x in layers)
        add(f"ResNet-50 int8 convs, batch {batch} ({len(layers)} convs)", ops, nbytes, "int8_ops",
            "int8 NHWC in/out (requantised), residual read, weights once; per-layer bounds summed; "
            "bf16 baseline: 2x bytes", baseline=(ops, 2 * nbytes, "bf16_flops"))
        # each layer is compute- or memory-bound on its own: the sum of per-layer bounds is tighter
        for gpu_name, gpu in GPUS.items():
            rows[-1][gpu_name] = _layer_sum(layers, gpu, "int8_ops", 1)
            rows[-1][gpu_name + " baseline"] = _layer_sum(layers, gpu, "bf16_flops", 2)
    return rows


def _layer_sum(layers, gpu, peak_key: str, bytes_factor: int) -> Dict[str, object]:
    times = [_bound(ops, bytes_factor * (act + w), gpu, peak_key) for ops, act, w in layers]
    compute = sum(1 for t in times if t["bound"] == "compute")
    return {"us": sum(t["us"] for t in times), "bound": f"{compute}/{len(times)} layers compute"}


# ----------------------------------------------------------------------------- report

def kernel_rows(run: Dict[str, object]) -> List[Dict[str, object]]:
    from zsq_engine.kernels import aot
    first_scenario = {}
    aligned_of = {}
    for sid, sc in run["scenarios"].items():
        for i in sc["compiles"]:
            first_scenario.setdefault(i, sid)
            aligned_of.setdefault(i, sc["aligned"])
    rows = []
    for i, rec in enumerate(run["compiles"]):
        row = {"kernel": rec["kernel"], "scenario": first_scenario.get(i, ""),
               "arch": "sm_90a" if rec["arch"] == 90 else f"sm_{rec['arch']}",
               "config": aot.config_label(rec), "error": rec.get("error")}
        if "error" not in rec:
            occ = h100_occupancy(rec["registers"], rec["num_warps"], rec["shared"]) if rec["arch"] == 90 else {}
            row.update(registers=rec["registers"], spill_bytes=rec["spill_stores"] + rec["spill_loads"],
                       shared_bytes=rec["shared"], mma=", ".join(rec["mma"]) or "-",
                       cp_async=rec["cp_async"], tma=rec["tma"], **occ,
                       problems=aot.problems(rec, aligned_of.get(i, True)))
        rows.append(row)
    return rows


def _short_mma(m: str) -> str:
    return m.replace("wgmma.mma_async.sync.aligned.", "wgmma ").replace("mma.sync.aligned.", "mma.sync ")


def render(run: Dict[str, object], rows: List[Dict[str, object]], estimates: List[Dict[str, object]]) -> str:
    ok = sum(1 for r in rows if not r.get("error") and not r.get("problems"))
    lines = [
        "# GPU readiness (static, no GPU needed)",
        "",
        "Generated by `python -m benchmarks.gpu_static` (CPU only); edit the generator, not this file.",
        "",
        "No kernel of this project has been timed on a GPU yet. What can be checked without one is",
        "checked here and in CI (`tests/test_triton_aot.py`, `tests/test_cuda_compile.py`): every",
        "GPU-path Triton kernel is compiled ahead of time with Triton's own compiler and bundled ptxas",
        "for sm_90a (H100/H200) and sm_80 (A100), from the launches the public launchers make, with the",
        "specialisation the JIT derives at launch (16-byte alignment of pointers and of sizes). Each",
        "compile must fit the per-block shared memory (227 KB on sm_90a, 163 KB on sm_80), spill no",
        "registers, lower int8 dots to `wgmma ... .s32.s8.s8` (64-row tiles on sm_90a) or `mma.sync`",
        "(16-row tiles, sm_80), and pipeline aligned K loops with `cp.async` (`num_stages - 1` operand",
        "stages in shared memory). No kernel has an fp16 / bf16 dot (fake quant, BN loss, AdaRound and",
        "scale search are elementwise / reductions on CUDA cores), so the tensor-core check applies to",
        "the int8 dots only. Coverage and the configs removed or moved because of these checks: see",
        "`zsq_engine/kernels/aot.py` and the comments at the autotune lists (operands whose rows are not",
        "16-byte aligned cannot use `cp.async` and get their own smaller tiles; a few tiles are",
        "Hopper-only because they spill on sm_80).",
        "",
        "The compile takes ~70 s on two idle CPU cores (66 s for an earlier 173-compile set at load 1;",
        "5 minutes when the 2-core machine was shared at load 8).",
        "",
        "## Running the GPU check (when a GPU is lent)",
        "",
        "`bash benchmarks/run_gpu.sh` fits one 9-minute command on an H100/H200: it builds the extension",
        "for the present GPU only, runs the GPU correctness tests, then the headline benchmarks in",
        "priority order under `--budget SECONDS` (default 540), writing each row to",
        "`benchmarks/results/` as soon as it is measured. `bash benchmarks/run_gpu.sh --dry-run` prints",
        "the plan and its estimated time on any machine; `--quick` pins one autotune config per shape",
        "(`ZSQ_AUTOTUNE=first`).",
        "",
        f"## Kernel x config resources ({len(rows)} compiles, {ok} pass every check)",
        "",
        f"Triton {run['triton']}; compiled with {run['jobs']} processes in {run['wall_s']} s. Occupancy: resident",
        "warps per H100 SM (of 64) from registers (65536 per SM, allocated per warp in units of 256),",
        "shared memory (228 KB per SM, 1 KB reserved per block), warps (64) and blocks (32) per SM.",
        "Registers are ptxas's count (`-v`); shared memory is Triton's dynamic allocation.",
        "",
        "| kernel | first scenario | arch | config | regs | spill B | smem KB | H100 warps/SM (limit) | MMA | cp.async |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['kernel']} | {r['scenario']} | {r['arch']} | {r['config']} | COMPILE ERROR | | | | | |")
            continue
        occ = f"{r['warps_per_sm']} ({r['limited_by']})" if "warps_per_sm" in r else "-"
        mma = _short_mma(r["mma"])
        flag = " **" + "; ".join(r["problems"]) + "**" if r["problems"] else ""
        lines.append(f"| {r['kernel']} | {r['scenario']} | {r['arch']} | {r['config']} | {r['registers']} | "
                     f"{r['spill_bytes']} | {r['shared_bytes'] / 1024:.1f} | {occ} | {mma}{flag} | {r['cp_async']} |")
    lines += [
        "",
        "## Roofline bounds for the headline shapes: ESTIMATES, not measurements",
        "",
        "Time bound = max(operations / peak, bytes / DRAM bandwidth) from datasheet figures: H100 SXM",
        "3.35 TB/s, H200 4.8 TB/s, both 1979 dense int8 TOPS and 989 dense bf16 TFLOPS. Bytes are the",
        "minimum traffic (each operand read once, the output written once); real kernels move more.",
        "The baseline column is the same workload in bf16 (bf16 operands, bf16 peak).",
        "",
        "| workload | ops | MB moved | H100 bound (us) | H200 bound (us) | bf16 baseline H100 (us) | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in estimates:
        h, h2 = e["H100 SXM"], e["H200"]
        base = e.get("H100 SXM baseline")
        base_s = f"{base['us']:.1f} ({base['bound']})" if base else "-"
        lines.append(f"| {e['workload']} | {e['ops']:.3g} | {e['bytes'] / 1e6:.1f} | {h['us']:.1f} ({h['bound']}) | "
                     f"{h2['us']:.1f} ({h2['bound']}) | {base_s} | {e['note']} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from-json", default=None, help="reuse a `python -m zsq_engine.kernels.aot` output")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--doc", default=str(DOC))
    parser.add_argument("--json", default=str(JSON_OUT))
    args = parser.parse_args(argv)
    from zsq_engine.kernels import aot
    if args.from_json:
        run = json.loads(Path(args.from_json).read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run = aot.run_in_subprocess(str(Path(tmp) / "aot.json"), jobs=args.jobs)
    rows = kernel_rows(run)
    estimates = headline_estimates()
    Path(args.doc).write_text(render(run, rows, estimates))
    payload = {"triton": run["triton"], "compile_wall_s": run["wall_s"], "h100_sm_limits": H100_SM, "gpus": GPUS,
               "kernels": rows, "roofline_estimates": estimates}
    Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
    bad = [r for r in rows if r.get("error") or r.get("problems")]
    print(f"{len(rows)} compiles, {len(bad)} with problems -> {args.doc}, {args.json}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
