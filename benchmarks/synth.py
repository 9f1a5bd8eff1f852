"""Genie-D synthesis iterations per second: zsq_engine vs an eager implementation of the same loop.

    python -m benchmarks.synth --device cpu      # Fashion-MNIST ResNet, batch 128
    python -m benchmarks.synth --device cuda     # ResNet-50 at 224x224, batch 128 (Genie's setting)
    python -m benchmarks.synth --device cpu --quick

Both sides run :func:`zsq_engine.synth.genie.synthesize_batch` (the same generator, latents,
swing convolution, optimisers and schedules), so the only differences are the ones zsq_engine
makes:

* ``eager``: what the reference code does: the teacher's parameters keep ``requires_grad`` (so
  every backward also computes weight gradients nobody uses) and the BN loss is computed layer by
  layer in Python from the hooked inputs (``torch.std_mean`` + norms, as in
  :func:`benchmarks.bn_stats.eager_loss`);
* ``zsq``: teacher frozen (``zsq_engine.utils.frozen_teacher``) and the batched fused
  ``ops.bn_stat_loss`` (one kernel pass per direction for all layers).

Seconds per iteration are measured as the difference between a long and a short run divided by
the difference in iterations, which cancels the per-batch set-up (generator creation, the BN loss
measured before and after). Rows are appended to benchmarks/results/synth.jsonl.
"""
from __future__ import annotations

import argparse
import copy
import time
import types
from typing import Dict, List

import torch

from benchmarks import harness
from benchmarks.bn_stats import eager_loss
from zsq_engine.models import get_model
from zsq_engine.synth import genie
from zsq_engine.utils import frozen_teacher


def _eager_ops():
    """A stand-in for ``zsq_engine.ops`` inside genie.py whose bn_stat_loss is the eager loop."""
    return types.SimpleNamespace(bn_stat_loss=lambda acts, means, vars_, variant: eager_loss(acts, means, vars_, variant))


def _run(teacher, batch, input_shape, iters, device, eager: bool) -> float:
    torch.manual_seed(0)
    settings = {"iters": iters, "gamma_every": 10 ** 9}
    saved_ops = genie.ops
    if eager:
        genie.ops = _eager_ops()
    try:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        genie.synthesize_batch(teacher, batch, input_shape, 10, settings, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0
    finally:
        genie.ops = saved_ops


def seconds_per_iter(teacher, batch, input_shape, device, eager: bool, short: int, long: int,
                     repeats: int) -> float:
    _run(teacher, batch, input_shape, 2, device, eager)  # warm-up (allocator, kernels)
    samples = []
    for _ in range(repeats):
        t_short = _run(teacher, batch, input_shape, short, device, eager)
        t_long = _run(teacher, batch, input_shape, long, device, eager)
        samples.append((t_long - t_short) / (long - short))
    return sorted(samples)[len(samples) // 2]


def bench(model_name: str, batch: int, device: torch.device, short: int, long: int,
          repeats: int) -> List[Dict[str, object]]:
    model = get_model(model_name, pretrained=model_name == "fmnist_resnet").to(device).eval()
    input_shape = (1, 28, 28) if model_name == "fmnist_resnet" else (3, 224, 224)
    eager_teacher = copy.deepcopy(model).requires_grad_(True)  # as the reference code leaves it
    t_eager = seconds_per_iter(eager_teacher, batch, input_shape, device, True, short, long, repeats)
    with frozen_teacher(copy.deepcopy(model)) as teacher:
        t_zsq = seconds_per_iter(teacher, batch, input_shape, device, False, short, long, repeats)
    return [dict(harness.environment(device), bench="genie_d_iteration", model=model_name, batch=batch,
                 input=list(input_shape), eager_ms=t_eager * 1e3, zsq_ms=t_zsq * 1e3,
                 eager_it_s=1.0 / t_eager, zsq_it_s=1.0 / t_zsq, speedup=t_eager / t_zsq,
                 iters_timed=long - short, threads=torch.get_num_threads() if device.type == "cpu" else None)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (batch 8, few iterations)")
    parser.add_argument("--no-write", action="store_true", help="print the table, append no rows")
    args = parser.parse_args(argv)
    harness.set_cpu_threads_from_env()
    device = torch.device(args.device)
    if args.quick:
        short, long, repeats, batch = 2, 4, 1, 8
    else:
        short, long, repeats, batch = 5, 25, 3, 128
    model = "resnet50" if device.type == "cuda" else "fmnist_resnet"
    rows = bench(model, batch, device, short, long, repeats)
    print(harness.markdown_table(rows, ["model", "batch", "eager_ms", "zsq_ms", "eager_it_s", "zsq_it_s", "speedup"]))
    if not args.no_write and not args.quick:
        print("rows appended to", harness.write_rows("synth", rows))


if __name__ == "__main__":
    main()
