"""BN-statistics loss forward+backward over all BN layers of a model: fused zsq_engine op vs eager.

    python -m benchmarks.bn_stats --device cpu     # Fashion-MNIST ResNet, batch 256 (C++ kernel)
    python -m benchmarks.bn_stats --device cuda    # ResNet-50, batch 128 (Triton kernels)
    python -m benchmarks.bn_stats --device cpu --quick

The BN inputs are captured once with forward pre-hooks (as the synthesis code does), then only
the loss and its backward to those activations are timed:

* ``eager``: what the reference repos do in their hooks: per layer ``torch.std_mean`` /
  ``torch.var_mean`` and norms / MSE, summed in Python, then ``autograd.grad``;
* ``zsq``: ``zsq_engine.ops.bn_stat_loss`` (one stats launch + one finish + one backward launch
  on GPU; one OpenMP pass per direction on CPU).

Reported: median time, bandwidth of the minimum traffic (read the activations twice and write
their gradients: 3 passes), its fraction of the device bandwidth, and zsq's speed-up over eager.
Rows are appended to benchmarks/results/bn_stats.jsonl.
"""
from __future__ import annotations

import argparse
from typing import Dict, List

import torch

from benchmarks import harness
from zsq_engine import ops
from zsq_engine.models import get_model


def capture_bn_inputs(model: torch.nn.Module, x: torch.Tensor):
    acts, means, vars_ = [], [], []

    def hook(module, inputs):
        acts.append(inputs[0].detach())
        means.append(module.running_mean.detach())
        vars_.append(module.running_var.detach())

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return acts, means, vars_


def eager_loss(acts, means, vars_, variant: str) -> torch.Tensor:
    """The hook-based loss of the reference repos, one layer at a time."""
    total = 0.0
    for a, m, v in zip(acts, means, vars_):
        a = a.float()
        if variant == "genie":
            std, mean = torch.std_mean(a, dim=(0, 2, 3) if a.dim() == 4 else (0,))
            c = a.shape[1]
            total = total + torch.norm(mean - m) ** 2 / c + torch.norm(std - torch.sqrt(v + 1e-6)) ** 2 / c
        elif variant == "zeroq":
            flat = a.reshape(a.shape[0], a.shape[1], -1)
            var, mean = torch.var_mean(flat, dim=2)
            std = torch.sqrt(var + 1e-6)
            total = total + (torch.norm(m - mean) ** 2 + torch.norm(torch.sqrt(v + 1e-6) - std) ** 2) / a.shape[0]
        else:  # gdfq / hast
            dims = (0, 2, 3) if a.dim() == 4 else (0,)
            var, mean = torch.var_mean(a, dim=dims, correction=0)
            total = total + torch.nn.functional.mse_loss(mean, m) + torch.nn.functional.mse_loss(var, v)
    if variant in ("gdfq", "hast"):
        total = total / len(acts)
    return total


def fwd_bwd(loss_fn, leaves):
    def run():
        loss = loss_fn(leaves)
        return torch.autograd.grad(loss, leaves)
    return run


def bench(model_name: str, batch: int, device: torch.device, variants: List[str], pretrained: bool,
          dtype: torch.dtype = torch.float32) -> List[Dict[str, object]]:
    model = get_model(model_name, pretrained=pretrained).to(device).eval()
    in_ch = 1 if model_name == "fmnist_resnet" else 3
    size = 28 if model_name == "fmnist_resnet" else 224
    x = torch.randn(batch, in_ch, size, size, device=device)
    acts, means, vars_ = capture_bn_inputs(model, x)
    leaves = [a.to(dtype).requires_grad_() for a in acts]
    elems = sum(a.numel() for a in acts)
    bytes_moved = 3 * elems * leaves[0].element_size()
    peak = harness.peak_bandwidth_gbps(device)
    env = harness.environment(device)
    rows = []
    for variant in variants:
        if variant == "zeroq" and any(a.dim() == 2 or a.shape[2] * a.shape[3] < 2 for a in acts):
            continue
        t_eager = harness.time_fn(fwd_bwd(lambda ls: eager_loss(ls, means, vars_, variant), leaves), device)
        t_zsq = harness.time_fn(fwd_bwd(lambda ls: ops.bn_stat_loss(ls, means, vars_, variant), leaves), device)
        gbps = bytes_moved / t_zsq / 1e9
        rows.append(dict(env, bench="bn_stat_loss_fwd_bwd", model=model_name, batch=batch, variant=variant,
                         dtype=str(dtype).replace("torch.", ""), layers=len(acts), elements=elems,
                         eager_ms=t_eager * 1e3, zsq_ms=t_zsq * 1e3, speedup=t_eager / t_zsq,
                         zsq_gbps=gbps, peak_gbps=peak, frac_peak=(gbps / peak) if peak else None,
                         threads=torch.get_num_threads() if device.type == "cpu" else None))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small batch smoke run")
    parser.add_argument("--variants", default="genie,zeroq,gdfq")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    harness.set_cpu_threads_from_env()
    device = torch.device(args.device)
    variants = args.variants.split(",")
    if device.type == "cuda":
        rows = bench("resnet50", 8 if args.quick else 128, device, variants, pretrained=False)
        rows += bench("resnet50", 8 if args.quick else 128, device, ["genie"], pretrained=False,
                      dtype=torch.bfloat16)
    else:
        rows = bench("fmnist_resnet", 32 if args.quick else 256, device, variants, pretrained=True)
    cols = ["model", "batch", "variant", "dtype", "layers", "eager_ms", "zsq_ms", "speedup", "zsq_gbps", "frac_peak"]
    print(harness.markdown_table(rows, cols))
    if not args.no_write:
        print("rows appended to", harness.write_rows("bn_stats", rows))


if __name__ == "__main__":
    main()
