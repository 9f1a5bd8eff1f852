"""Every GPU-path Triton kernel compiled for sm_90a and sm_80 on this (GPU-less) machine.

The interpreter these tests otherwise use runs a different program from the GPU (``while``
K loops, one tiny config), so the kernels are compiled ahead of time in a subprocess without
``TRITON_INTERPRET``, from launches the public launchers really make (on meta tensors), with
the specialisation Triton's JIT derives at launch (``tt.divisibility`` 16 for aligned pointers
and sizes). See ``zsq_engine/kernels/aot.py`` for what is compiled.

Coverage: every autotune config of the integer GEMM / conv kernels at the aligned
specialisation on sm_90a for the int8, W4A8 and W4A4 operand kinds, all configs of the int8
GEMM, small-M W4A8 GEMM and conv on sm_80, all configs of the unaligned lists; the uint8 /
unsigned-int4 operand kinds and every epilogue kind on the first config of each list; every
dtype / layout / mode of the elementwise and reduction kernels on sm_90a, a subset on sm_80.
Checks per compile (``aot.problems``): it compiles; shared memory within the per-block limit;
no register spills / local memory; int8 dots on wgmma ``.s32.s8.s8`` (sm_90a, 64-row tiles) or
mma.sync s8 (16-row tiles, sm_80); aligned K loops with num_stages > 1 software-pipelined
(cp.async or TMA, shared memory holding at least num_stages - 1 operand stages).
The one compile run takes ~70 s of two CPU cores (docs/gpu.md).
"""
import ast
import json
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")

from zsq_engine.kernels import aot  # noqa: E402  (pure data until a scenario is captured)

KERNELS_DIR = Path(__file__).resolve().parents[1] / "kernels"
SCENARIOS = aot.scenarios()


@pytest.fixture(scope="module")
def aot_run(tmp_path_factory, request):
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    result = aot.run_in_subprocess(str(out), jobs=2, timeout=1200)
    failed = sum(1 for r in result["compiles"] if "error" in r)
    # printed at the end of the run by tests/conftest.py (pytest_terminal_summary)
    request.config.zsq_summary_lines = getattr(request.config, "zsq_summary_lines", []) + [
        f"triton AOT: {len(result['compiles'])} kernel x config compiles (sm_90a + sm_80, {failed} failed) "
        f"for {len(result['scenarios'])} launcher scenarios in {result['wall_s']} s"]
    return result


def _records(run, sc):
    return [run["compiles"][i] for i in run["scenarios"][sc.id]["compiles"]]


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.id)
def test_compiles_for_the_gpu_with_resource_checks(sc, aot_run, record_property):
    recs = _records(aot_run, sc)
    assert recs, f"{sc.id}: the launcher made no kernel launch"
    failures = [f"{r['kernel']} [{aot.config_label(r)}] sm_{r['arch']}: {p}"
                for r in recs for p in aot.problems(r, sc.aligned)]
    record_property("compiles", len(recs))
    assert not failures, "\n".join(failures)


def _jit_kernels():
    """Every @triton.jit function named *_kernel in kernels/*.py (read from the source, so a
    new kernel that no scenario launches is noticed)."""
    names = set()
    for path in KERNELS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_kernel"):
                if any("jit" in ast.unparse(d) for d in node.decorator_list):
                    names.add(node.name)
    return names


@pytest.mark.slow
@pytest.mark.subprocess
def test_every_kernel_is_compiled_for_both_archs(aot_run):
    kernels = _jit_kernels()
    assert len(kernels) >= 15, kernels
    for arch in (90, 80):
        compiled = {r["kernel"] for r in aot_run["compiles"] if r["arch"] == arch}
        missing = kernels - compiled
        assert not missing, f"kernels never compiled for sm_{arch}: {sorted(missing)}"


@pytest.mark.slow
@pytest.mark.subprocess
def test_every_autotune_config_of_each_operand_kind_on_sm90a(aot_run):
    """The aligned int8 / W4A8 / W4A4 scenarios compile as many distinct GEMM configs as the
    large + small-M autotune lists hold (7 + 5), and each large one lowers to wgmma."""
    for kind in aot.GEMM_KINDS:
        labels = set()
        for sc in SCENARIOS:
            args = dict(sc.args)
            if sc.op == "gemm" and sc.arch == "sm90a" and sc.aligned and sc.configs == "all" and args["kind"] == kind:
                labels |= {aot.config_label(r) for r in _records(aot_run, sc) if r["kernel"] == "_int_gemm_kernel"}
        assert len(labels) == 12, (kind, sorted(labels))


@pytest.mark.slow
@pytest.mark.subprocess
def test_unaligned_operands_are_not_given_cp_async(aot_run):
    """The specialisation matters: unaligned rows compile without cp.async (so the aligned
    scenarios' pipelining is the JIT's alignment at work, not something every compile has)."""
    sc = next(s for s in SCENARIOS if s.op == "gemm" and not s.aligned and dict(s.args)["M"] > 16
              and dict(s.args)["kind"] == "int8")
    recs = [r for r in _records(aot_run, sc) if r["kernel"] == "_int_gemm_kernel"]
    assert recs and all(r["cp_async"] == 0 and r["tma"] == 0 for r in recs)
    assert all("a_ptr" not in r["divisible_args"] for r in recs)


def test_problems_flags_each_defect():
    """The checks can fail: a record with spills, too much shared memory, the wrong MMA or an
    unpipelined loop is reported."""
    good = {"kernel": "k", "arch": 90, "num_warps": 8, "num_stages": 3, "shared": 3 * 49152,
            "constexprs": {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "A_KIND": 0, "B_PACKED": False},
            "spill_stores": 0, "spill_loads": 0, "local_ops": 0, "dot_types": ["i8"], "cp_async": 36, "tma": 0,
            "mma": ["wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8"]}
    assert aot.problems(good) == []
    assert aot.stage_bytes(good) == 128 * 128 + 256 * 128
    cases = {
        "spill": dict(spill_stores=8, spill_loads=4),
        "shared memory": dict(shared=232449),
        "wgmma": dict(mma=["mma.sync.aligned.m16n8k32.row.col.satfinite.s32.s8.s8.s32"]),
        "pipelined": dict(cp_async=0),
        "multi-buffered": dict(shared=49152),
    }
    for word, change in cases.items():
        found = aot.problems({**good, **change})
        assert found and any(word in p for p in found), (word, found)
    assert aot.problems({**good, "cp_async": 0}, aligned=False) == []
    assert aot.problems({**good, "arch": 80, "shared": 166913,
                         "mma": ["mma.sync.aligned.m16n8k32.row.col.satfinite.s32.s8.s8.s32"]})
    assert "does not compile" in aot.problems({"error": "boom"})[0]


def test_smem_limits_are_the_documented_ones():
    # CUDA C++ Programming Guide, technical specifications: 227 KB (9.0) and 163 KB (8.0) per block
    assert aot.SMEM_PER_BLOCK == {90: 232448, 80: 166912}


def test_scenario_ids_are_unique():
    ids = [sc.id for sc in SCENARIOS]
    assert len(ids) == len(set(ids))
    json.dumps([dict(sc.args) for sc in SCENARIOS])  # plain data, picklable for the pool


def test_unaligned_operands_dispatch_to_their_own_tiles():
    """The host decides which autotune list a launch uses from what the JIT will see: rows that
    start and end on 16-byte boundaries get the pipelined tiles, anything else the small ones."""
    import torch

    from zsq_engine.kernels import int_conv, int_gemm
    assert int_gemm.rows_aligned(torch.zeros(4, 64, dtype=torch.int8), 64)
    assert int_gemm.rows_aligned(torch.zeros(1, 64, dtype=torch.int8), 64)
    assert not int_gemm.rows_aligned(torch.zeros(4, 63, dtype=torch.int8), 63)  # odd K
    assert not int_gemm.rows_aligned(torch.zeros(4, 65, dtype=torch.int8)[:, 1:], 64)  # offset view
    assert not int_gemm.rows_aligned(torch.zeros(64, 4, dtype=torch.int8).t(), 64)  # K-strided
    x = torch.zeros(2, 8, 8, 32, dtype=torch.int8)
    w = torch.zeros(16, 3, 3, 32, dtype=torch.int8)
    assert int_conv._channels_aligned(x, w)
    assert not int_conv._channels_aligned(torch.zeros(2, 8, 8, 40, dtype=torch.int8),
                                          torch.zeros(16, 3, 3, 40, dtype=torch.int8))  # C = 40
    assert not int_conv._channels_aligned(torch.zeros(2, 32, 8, 8, dtype=torch.int8).permute(0, 2, 3, 1), w)
