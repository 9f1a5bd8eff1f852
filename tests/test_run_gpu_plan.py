"""benchmarks/run_gpu.sh --dry-run: the plan for a lent GPU fits the 540 s budget (runs on the CPU)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.subprocess  # every test runs benchmarks/run_gpu.sh in bash


def _dry_run(*extra):
    env = dict(os.environ, PY=sys.executable)
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "run_gpu.sh"), "--dry-run", *extra], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    plan = {}
    for line in run.stdout.splitlines():
        m = re.match(r"(\w+)\s+(full|quick|skip)\s+(\d+)\s+(\d+)$", line.strip())
        if m:
            plan[m.group(1)] = (m.group(2), int(m.group(3)), int(m.group(4)))
    total = re.search(r"estimated total: (\d+) s \(budget (\d+) s\)", run.stdout)
    return run, plan, total


def test_default_plan_fits_540_s_and_runs_every_step():
    run, plan, total = _dry_run()
    assert run.returncode == 0, run.stdout + run.stderr
    assert total and int(total.group(2)) == 540
    assert int(total.group(1)) <= 540
    assert sum(est for _mode, est, _cap in plan.values()) == int(total.group(1))
    order = list(plan)
    assert order[:2] == ["build", "tests"] and order.index("int8_gemm") < order.index("resnet50")
    # on a CPU machine no GPU build can be reused: the plan pays for the build
    assert plan["build"][0] == "full"
    assert all(mode != "skip" for mode, _est, _cap in plan.values()), plan


@pytest.mark.parametrize("budget", [200, 330, 400])
def test_smaller_budgets_drop_the_lowest_priority_work_first(budget):
    run, plan, total = _dry_run("--budget", str(budget))
    assert int(total.group(1)) <= budget, run.stdout
    modes = [plan[s][0] for s in ("int8_gemm", "w4a8_gemm", "lsq_fake_quant", "bn_loss", "resnet50")]
    rank = {"full": 2, "quick": 1, "skip": 0}
    # priority order: a later benchmark never gets more than an earlier one
    assert all(rank[a] >= rank[b] for a, b in zip(modes, modes[1:])), modes
    if budget == 200:
        assert set(modes) == {"skip"}


def test_step_caps_bound_each_step():
    from benchmarks import run_gpu
    plan = run_gpu.make_plan(540, skip_build=True, skip_tests=False)
    assert sum(p["estimate_s"] for p in plan) <= 540
    for p in plan:
        if p["mode"] != "skip" and p["step"] != "tests":
            assert p["estimate_s"] < p["cap_s"] <= 1.5 * p["estimate_s"] + 1e-9
    # with the build reused, everything runs in full mode
    assert {p["mode"] for p in plan if p["step"] != "build"} == {"full"}
