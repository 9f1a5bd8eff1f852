"""The GPU check in one command that fits a lent machine's 9 minutes (``bash benchmarks/run_gpu.sh``).

Order: build the extension for the present GPU only (reused when the sources, torch and the
arch are unchanged), the GPU correctness tests (every Triton and CUDA kernel on the device
against its reference: the ``cuda`` parametrisations of the test suite), then the headline
benchmarks in priority order:

1. int8 GEMM 8192^3 vs cuBLAS bf16 and torch._int_mm;
2. W4A8 GEMM at M = 1 and 16 (K = N = 8192) vs bf16;
3. LSQ fake-quant fwd+bwd [64,256,56,56] vs PyTorch's native learnable op and DRAM bandwidth;
4. batched BN-statistic loss (ResNet-50) vs eager;
5. ResNet-50 integer model (W8A8) vs FP16 channels_last at batch 1 and 256.

Each step runs in its own process under its own time cap and appends its rows to
``benchmarks/results/*.jsonl`` as soon as each is measured (a killed step keeps its rows). The
plan is made before anything runs: every step in its quick mode first (``ZSQ_AUTOTUNE=first``
pins one autotune config per shape, fewer repeats), then steps are upgraded to the full mode
in priority order while the estimates fit ``--budget`` (default 540 s); what does not fit even
quick is skipped. The estimates are guesses from CPU-side compile times until a GPU run
replaces them. ``--dry-run`` prints the plan anywhere (no GPU needed); nothing here installs
packages or touches the network.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BUILD_STAMP = ROOT / "build" / "zsq_gpu_build.json"

# step -> (full seconds, quick seconds); None: no such mode. Guesses, see the module doc.
ESTIMATES: Dict[str, Tuple[Optional[float], Optional[float]]] = {
    "build": (150.0, None),
    "tests": (150.0, None),
    "int8_gemm": (45.0, 20.0),
    "w4a8_gemm": (40.0, 20.0),
    "lsq_fake_quant": (30.0, 15.0),
    "bn_loss": (45.0, 20.0),
    "resnet50": (150.0, 60.0),
}
STEPS = list(ESTIMATES)
RESULT_FILES = {"int8_gemm": "int_gemm", "w4a8_gemm": "int_gemm", "lsq_fake_quant": "fake_quant",
                "bn_loss": "bn_stats", "resnet50": "runtime"}
# a step may run this much longer than its estimate before it is stopped
CAP_FACTOR = 1.5
TESTS_CAP_S = 180.0


# ----------------------------------------------------------------------------- plan

def build_is_reusable() -> bool:
    """A previous in-place build of the extension for this torch / arch, newer than its sources."""
    if not BUILD_STAMP.exists():
        return False
    try:
        stamp = json.loads(BUILD_STAMP.read_text())
    except ValueError:
        return False
    libs = list((ROOT / "zsq_engine").glob("_C*.so"))
    if not libs or stamp.get("arch") != _arch_list() or stamp.get("torch") != _torch_version():
        return False
    sources = [p for p in (ROOT / "csrc").rglob("*") if p.is_file()] + [ROOT / "setup.py"]
    newest = max(p.stat().st_mtime for p in sources)
    return min(p.stat().st_mtime for p in libs) >= newest


def _torch_version() -> Optional[str]:
    try:
        import torch
        return torch.__version__
    except ImportError:
        return None


def _arch_list() -> Optional[str]:
    """TORCH_CUDA_ARCH_LIST for the present GPU only ("9.0a" on Hopper: wgmma needs the a-variant)."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(0)
    except ImportError:
        return None
    return f"{major}.{minor}" + ("a" if major == 9 else "")


def make_plan(budget: float, skip_build: bool, skip_tests: bool, only: Optional[List[str]] = None,
              force_quick: bool = False) -> List[Dict[str, object]]:
    """[{step, mode ('full' | 'quick' | 'skip'), estimate_s, cap_s}] in run order."""
    plan = []
    for step in STEPS:
        full, quick = ESTIMATES[step]
        skipped = (step == "build" and skip_build) or (step == "tests" and skip_tests) or \
            (only is not None and step not in only and step not in ("build", "tests"))
        mode = "skip" if skipped else ("quick" if quick is not None else "full")
        plan.append({"step": step, "mode": mode, "estimate_s": 0.0 if skipped else (quick or full)})

    def total():
        return sum(p["estimate_s"] for p in plan)

    # mandatory-first: what does not fit even in its cheapest mode is skipped, lowest priority first
    for p in reversed(plan):
        if total() <= budget:
            break
        if p["mode"] != "skip":
            p["mode"], p["estimate_s"] = "skip", 0.0
    if not force_quick:
        for p in plan:
            full, quick = ESTIMATES[p["step"]]
            if p["mode"] == "quick" and full is not None and total() - p["estimate_s"] + full <= budget:
                p["mode"], p["estimate_s"] = "full", full
    for p in plan:
        p["cap_s"] = 0.0 if p["mode"] == "skip" else (
            TESTS_CAP_S if p["step"] == "tests" else round(CAP_FACTOR * p["estimate_s"], 1))
    return plan


def print_plan(plan, budget: float) -> float:
    total = sum(p["estimate_s"] for p in plan)
    print(f"{'step':<16} {'mode':<6} {'estimate s':>10} {'cap s':>7}")
    for p in plan:
        print(f"{p['step']:<16} {p['mode']:<6} {p['estimate_s']:>10.0f} {p['cap_s']:>7.0f}")
    print(f"estimated total: {total:.0f} s (budget {budget:.0f} s): {'fits' if total <= budget else 'DOES NOT FIT'}")
    return total


# ----------------------------------------------------------------------------- steps (child processes)

def _rows_out(name: str, rows, mode: str):
    from benchmarks import harness
    for r in rows:
        r["run_gpu_mode"] = mode
    path = harness.write_rows(name, rows)
    print(f"{len(rows)} rows appended to {path}", flush=True)


def step_int8_gemm(quick: bool):
    import torch
    from benchmarks import harness, int_gemm
    dev = torch.device("cuda")
    env = harness.environment(dev)
    p8, p16 = int_gemm.peaks(dev)
    _rows_out("int_gemm", int_gemm._bench_shape("w8a8", (8192, 8192, 8192), dev, p8, p16, env),
              "quick" if quick else "full")


def step_w4a8_gemm(quick: bool):
    import torch
    from benchmarks import harness, int_gemm
    dev = torch.device("cuda")
    env = harness.environment(dev)
    p8, p16 = int_gemm.peaks(dev)
    for m in (16, 1):  # one row set at a time: a stopped step keeps the first
        _rows_out("int_gemm", int_gemm._bench_shape("w4a8", (m, 8192, 8192), dev, p8, p16, env),
                  "quick" if quick else "full")


def step_lsq_fake_quant(quick: bool):
    import torch
    from benchmarks import fake_quant
    dev = torch.device("cuda")
    cases = [c for c in fake_quant.CASES if c[1] == (64, 256, 56, 56)]
    for label, shape, axis in cases[:1] if quick else cases:
        _rows_out("fake_quant", fake_quant.run_case(label, shape, axis, dev), "quick" if quick else "full")


def step_bn_loss(quick: bool):
    import torch
    from benchmarks import bn_stats
    dev = torch.device("cuda")
    variants = ["genie"] if quick else ["genie", "zeroq", "gdfq"]
    _rows_out("bn_stats", bn_stats.bench("resnet50", 128, dev, variants, pretrained=False),
              "quick" if quick else "full")


def step_resnet50(quick: bool):
    import torch
    from benchmarks import harness, runtime
    dev = torch.device("cuda")
    env = harness.environment(dev)
    for batch in (1, 256):  # batch 1 first: its rows are kept if batch 256 is stopped
        _rows_out("runtime", runtime.bench_model("resnet50", (3, 224, 224), (batch,), dev, (8,), False, env, quick),
                  "quick" if quick else "full")


STEP_FUNCS = {"int8_gemm": step_int8_gemm, "w4a8_gemm": step_w4a8_gemm, "lsq_fake_quant": step_lsq_fake_quant,
              "bn_loss": step_bn_loss, "resnet50": step_resnet50}


# ----------------------------------------------------------------------------- driver

def _run(cmd: List[str], cap: float, env: Optional[dict] = None) -> Tuple[str, float]:
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=max(cap, 1.0))
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the step's whole process group (pytest workers, compilers)
        proc.wait()
        status = f"stopped at its {cap:.0f} s cap"
    return status, time.time() - t0


def ensure_kernels_importable() -> None:
    """``kernels/`` ships as ``zsq_engine.kernels`` through setup.py's package_dir; without an
    install (this script only builds in place) the package needs the link a dev checkout has."""
    link = ROOT / "zsq_engine" / "kernels"
    if not link.exists():
        link.symlink_to(Path("..") / "kernels")


def _build(cap: float) -> Tuple[str, float]:
    arch = _arch_list()
    if arch is None:
        return "failed (no CUDA device)", 0.0
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=arch, MAX_JOBS=str(os.cpu_count() or 1))
    status, seconds = _run([sys.executable, "setup.py", "build_ext", "--inplace"], cap, env)
    if status != "ok":
        return status, seconds
    # setup.py falls back to a CPU-only extension when the CUDA part fails: only a build with
    # the CUDA kernels is worth reusing
    probe = subprocess.run([sys.executable, "-c", "from zsq_engine._ext import extension_status as s; "
                            "import json; print(json.dumps(s()))"], cwd=ROOT, capture_output=True, text=True)
    try:
        ext = json.loads(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        ext = {"cuda": False, "error": probe.stderr[-500:]}
    if not ext.get("cuda"):
        return f"built without CUDA ({ext.get('error')})", seconds
    BUILD_STAMP.parent.mkdir(exist_ok=True)
    BUILD_STAMP.write_text(json.dumps({"arch": arch, "torch": _torch_version()}))
    return status, seconds


def _tests(cap: float) -> Tuple[str, float]:
    cmd = [sys.executable, "-m", "pytest", "-q", "tests", "-k", "cuda", "-p", "no:cacheprovider",
           "--ignore=tests/test_cuda_compile.py", "--ignore=tests/test_triton_aot.py",
           "--junitxml", str(RESULTS / "gpu_tests.xml")]
    return _run(cmd, cap)


def _result_sizes() -> Dict[str, int]:
    return {name: (RESULTS / f"{name}.jsonl").stat().st_size if (RESULTS / f"{name}.jsonl").exists() else 0
            for name in set(RESULT_FILES.values())}


def _new_rows(before: Dict[str, int], name: str) -> List[dict]:
    path = RESULTS / f"{name}.jsonl"
    if not path.exists():
        return []
    with open(path) as f:
        f.seek(before.get(name, 0))
        return [json.loads(line) for line in f if line.strip()]


SUMMARY_COLUMNS = {
    "int_gemm": ["kind", "impl", "M", "N", "K", "time_ms", "tops", "frac_peak", "speedup_vs_bf16"],
    "fake_quant": ["case", "impl", "median_ms", "gbps", "frac_of_peak_bw", "speedup_vs_native"],
    "bn_stats": ["variant", "dtype", "eager_ms", "zsq_ms", "speedup", "frac_peak"],
    "runtime": ["model", "impl", "precision", "batch", "cuda_graph", "ms", "speedup_vs_fp16"],
}


def drive(args) -> int:
    skip_build = args.skip_build or build_is_reusable()
    plan = make_plan(args.budget, skip_build, args.skip_tests, args.only, args.quick)
    print_plan(plan, args.budget)
    if args.dry_run:
        return 0 if sum(p["estimate_s"] for p in plan) <= args.budget else 1
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        print("run_gpu: no CUDA device here (use --dry-run to see the plan)", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    ensure_kernels_importable()
    start = time.time()
    before = _result_sizes()
    done = []
    tests_ok = True
    for i, p in enumerate(plan):
        step, mode = p["step"], p["mode"]
        left = args.budget - (time.time() - start)
        if mode != "skip":
            # re-plan what is left with the time actually left (an overrun makes later steps quick / skipped)
            later = make_plan(left, True, True, [q["step"] for q in plan[i:] if q["mode"] != "skip"], args.quick)
            mine = next(q for q in later if q["step"] == step)
            if step not in ("build", "tests"):
                mode = mine["mode"]
        if mode == "skip" or left <= 0:
            done.append({"step": step, "mode": "skip", "status": "skipped", "seconds": 0.0})
            continue
        cap = min(p["cap_s"] if step in ("build", "tests") else mine["cap_s"], left)
        print(f"\n=== {step} ({mode}, cap {cap:.0f} s, {left:.0f} s of budget left) ===", flush=True)
        if step == "build":
            status, seconds = _build(cap)
        elif step == "tests":
            status, seconds = _tests(cap)
            tests_ok = status == "ok"
        else:
            env = dict(os.environ)
            if mode == "quick":
                env["ZSQ_AUTOTUNE"] = "first"
            cmd = [sys.executable, "-m", "benchmarks.run_gpu", "--step", step]
            cmd += ["--quick"] if mode == "quick" else []
            status, seconds = _run(cmd, cap, env)
        done.append({"step": step, "mode": mode, "status": status, "seconds": round(seconds, 1)})
        print(f"=== {step}: {status} in {seconds:.0f} s ===", flush=True)

    print(f"\n## GPU run summary ({time.time() - start:.0f} s of {args.budget:.0f} s)\n")
    print(f"{'step':<16} {'mode':<6} {'status':<28} {'seconds':>8}")
    for d in done:
        print(f"{d['step']:<16} {d['mode']:<6} {d['status']:<28} {d['seconds']:>8.0f}")
    from benchmarks import harness
    for name, cols in SUMMARY_COLUMNS.items():
        rows = _new_rows(before, name)
        if rows:
            print(f"\n### {name} (rows appended to benchmarks/results/{name}.jsonl)\n")
            print(harness.markdown_table(rows, cols))
    with open(RESULTS / "gpu_run_steps.jsonl", "a") as f:
        f.write(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "budget_s": args.budget,
                            "steps": done}) + "\n")
    return 0 if tests_ok and all(d["status"] in ("ok", "skipped") for d in done) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run (default 540)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time, run nothing")
    parser.add_argument("--quick", action="store_true", help="every benchmark in its quick mode")
    parser.add_argument("--skip-build", action="store_true", help="use the extension as it is")
    parser.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    parser.add_argument("--only", action="append", default=None, choices=list(STEP_FUNCS),
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--step", choices=list(STEP_FUNCS), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error(f"--budget must be positive, got {args.budget}")
    if args.step:
        STEP_FUNCS[args.step](args.quick)
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
