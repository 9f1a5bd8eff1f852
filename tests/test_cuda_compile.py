"""Compile every CUDA source with nvcc for sm_80 and sm_90a, even where nothing can run it.

The .cu files must stay torch-free (DESIGN.md: the CPU build of torch ships incomplete CUDA
headers), so they are compiled here with nvcc alone, exactly as a user's machine without a GPU
would see them. Skipped when nvcc is not on PATH.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
CUDA_DIR = CSRC / "cuda"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")
GENCODES = [
    "-gencode", "arch=compute_80,code=sm_80",
    "-gencode", "arch=compute_90a,code=sm_90a",
]  # fmt: skip
# Generous per file; the sources here compile in a few seconds each.
NVCC_TIMEOUT_S = 120
TORCH_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](torch|ATen|c10|caffe2)/', re.MULTILINE)

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def test_cuda_sources_exist():
    assert CU_FILES, f"no .cu files under {CUDA_DIR}"


@pytest.mark.parametrize("source", CU_FILES + sorted(CUDA_DIR.glob("*.h")), ids=lambda p: p.name)
def test_cuda_sources_are_torch_free(source):
    match = TORCH_INCLUDE.search(source.read_text())
    assert match is None, (
        f"{source.name} includes a torch header ({match.group(0).strip()}); CUDA sources must use "
        "CUDA headers only and be called through a plain launcher declared in csrc/cuda/launchers.h"
    )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compile each .cu once (one nvcc call per file, both gencodes): name -> (object, error)."""
    out_dir = tmp_path_factory.mktemp("nvcc")
    results = {}
    for source in CU_FILES:
        obj = out_dir / (source.stem + ".o")
        cmd = [NVCC, "-c", "-std=c++17", "-O3", *GENCODES, "-Xptxas", "-v", f"-I{CSRC}", str(source), "-o", str(obj)]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=NVCC_TIMEOUT_S)
        error = None
        if run.returncode != 0:
            error = f"nvcc exit {run.returncode}:\n{' '.join(cmd)}\n{run.stdout}\n{run.stderr}"
        results[source.name] = (obj, error)
        PTXAS_LOGS[source.name] = run.stdout + run.stderr
    return results


PTXAS_LOGS = {}
# Opt-in shared memory per block (CUDA C++ Programming Guide, technical specifications).
SMEM_PER_BLOCK = {"sm_80": 163 * 1024, "sm_90a": 227 * 1024}
_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\w+)'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(log: str):
    """{(kernel, arch): {registers, stack, spill_stores, spill_loads, smem}} from ``ptxas -v``."""
    out, current = {}, None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = (m.group(1), m.group(2))
            out[current] = {"registers": None, "stack": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0}
            continue
        if current is None:
            continue
        m = _SPILLS.search(line)
        if m:
            out[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = _USED.search(line)
        if m:
            out[current]["registers"] = int(m.group(1))
            out[current]["smem"] = int(m.group(2) or 0)
    return out


def test_parse_ptxas_reads_spills_and_smem():
    log = ("ptxas info    : Compiling entry function '_Z1kPi' for 'sm_90a'\n"
           "ptxas info    : Function properties for _Z1kPi\n"
           "    16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads\n"
           "ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 384 bytes cmem[0]\n")
    assert parse_ptxas(log) == {("_Z1kPi", "sm_90a"): {"registers": 40, "stack": 16, "spill_stores": 12,
                                                      "spill_loads": 8, "smem": 2048}}


@pytest.mark.slow
@pytest.mark.subprocess
@needs_nvcc
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles_for_sm80_and_sm90a(source, compiled):
    obj, error = compiled[source.name]
    assert error is None, f"nvcc failed on {source.name}: {error}"
    assert obj.stat().st_size > 0
    cuobjdump = shutil.which("cuobjdump") or str(Path(NVCC).resolve().parent / "cuobjdump")
    if Path(cuobjdump).exists():
        listing = subprocess.run(
            [cuobjdump, "--list-elf", str(obj)], capture_output=True, text=True, timeout=60
        ).stdout
        assert "sm_80" in listing and "sm_90a" in listing, listing


@pytest.mark.slow
@pytest.mark.subprocess
@needs_nvcc
@pytest.mark.skipif(shutil.which("nm") is None, reason="nm is not on PATH")
def test_declared_launchers_are_defined(compiled):
    """Every C launcher in launchers.h has an unmangled definition in some .cu file."""
    header = (CUDA_DIR / "launchers.h").read_text()
    declared = set(re.findall(r"cudaError_t\s+(\w+)\s*\(", header))
    assert declared, "launchers.h declares no launchers"
    defined = set()
    for obj, error in compiled.values():
        if error is not None:
            continue  # reported by test_nvcc_compiles_for_sm80_and_sm90a
        symbols = subprocess.run(["nm", "--defined-only", str(obj)], capture_output=True, text=True)
        defined |= {line.split()[-1] for line in symbols.stdout.splitlines() if " T " in line}
    missing = declared - defined
    assert not missing, f"launchers declared in launchers.h but not defined extern \"C\": {missing}"


@pytest.mark.slow
@pytest.mark.subprocess
@needs_nvcc
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_ptxas_resources_within_limits(source, compiled):
    """``nvcc -Xptxas -v``: every kernel of the file, for both archs, spills nothing, uses no
    stack (local memory) and fits the per-block shared memory."""
    _obj, error = compiled[source.name]
    assert error is None, error
    report = parse_ptxas(PTXAS_LOGS[source.name])
    archs = {arch for _kernel, arch in report}
    assert archs == {"sm_80", "sm_90a"}, f"ptxas reported {sorted(archs)} for {source.name}"
    for (kernel, arch), r in report.items():
        assert r["registers"] is not None and 0 < r["registers"] <= 255, (kernel, arch, r)
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack"] == 0, (kernel, arch, r)
        assert r["smem"] <= SMEM_PER_BLOCK[arch], (kernel, arch, r)
