"""Block-reconstruction iterations per second: zsq_engine vs eager BRECQ-style quantizer code.

    python -m benchmarks.recon --device cpu
    python -m benchmarks.recon --device cuda
    python -m benchmarks.recon --device cpu --quick

Units: a ResNet-18 BasicBlock with a downsample (``layer2.0``, input [32, 64, 56, 56]) and a
MobileNetV2 InvertedResidual (``features.3``, input [32, 24, 56, 56]), batch 32 as the papers,
W4A4, random weights (speed does not depend on them). Both sides run the same
:func:`zsq_engine.recon.reconstruct_unit` loop (Genie-M by default: AdaRound logits + learned
weight step + LSQ activation steps + QDrop, Adam, annealed regulariser); the eager side swaps in
quantizers written the way the reference repositories write them: rectified-sigmoid AdaRound,
``round_ste`` LSQ fake-quant with autograd through every elementwise op, QDrop as
``torch.where(torch.rand_like(x) < p, x_q, x)`` (for the activation drop and the unit-input mix),
the regulariser as a tensor expression.
zsq uses the fused kernels (one launch per direction, no full-size temporaries; the unit input
mixed by ``ops.qdrop_mix`` in one pass).

Seconds per iteration = (long run - short run) / (difference in iterations), which cancels the
set-up and the final hard-rounding bake. Rows go to benchmarks/results/recon.jsonl.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
from typing import Dict, List

import torch

from benchmarks import harness
from zsq_engine.models import get_model
from zsq_engine.quant import calibrate_activations, quantize_model
from zsq_engine.quant.quantizer import SCALE_EPS
from zsq_engine.recon import reconstruct as recon_mod
from zsq_engine.recon.quantizers import AdaRoundWeightQuantizer, LSQActQuantizer

GAMMA, ZETA = -0.1, 1.1


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


class EagerAdaRound(AdaRoundWeightQuantizer):
    """Same state as the fused quantizer; forward and regulariser as plain tensor expressions."""

    def _h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        shape = [-1] + [1] * (self.w_floor.dim() - 1)
        s = self.scale.clamp_min(SCALE_EPS).reshape(shape)
        z = self.zero_point.reshape(shape)
        h = (self.alpha >= 0).float() if self.hard else self._h()
        q = torch.clamp(self.w_floor + h + z, self.quant_min, self.quant_max)
        return (q - z) * s

    def regularizer(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self._h() - 1).abs().pow(beta)).sum()


class EagerLSQAct(LSQActQuantizer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        s = self.scale.clamp_min(SCALE_EPS)
        q = torch.clamp(_round_ste(x / s) + self.zero_point, self.quant_min, self.quant_max)
        xq = (q - self.zero_point) * s
        if self.dropping and self.drop_prob < 1.0:
            return torch.where(torch.rand_like(x) < self.drop_prob, xq, x)
        return xq


def eager_mix(x_q: torch.Tensor, x_fp: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    return torch.where(torch.rand_like(x_q) < p, x_q, x_fp)


@contextlib.contextmanager
def eager_quantizers():
    saved = recon_mod.AdaRoundWeightQuantizer, recon_mod.LSQActQuantizer, recon_mod.mix_unit_input
    recon_mod.AdaRoundWeightQuantizer, recon_mod.LSQActQuantizer = EagerAdaRound, EagerLSQAct
    recon_mod.mix_unit_input = eager_mix
    try:
        yield
    finally:
        recon_mod.AdaRoundWeightQuantizer, recon_mod.LSQActQuantizer, recon_mod.mix_unit_input = saved


def _unit_and_cache(model_name: str, unit_name: str, n: int, device: torch.device):
    torch.manual_seed(0)
    model = get_model(model_name, pretrained=False).eval()
    data = torch.randn(n, 3, 224, 224)
    qmodel = quantize_model(model, 4, 4, first_last_bits=8, weight_method="minmax", act_method="minmax").eval()
    calibrate_activations(qmodel, [data[:16]], progress=False)
    qmodel = qmodel.to(device)
    x, y = recon_mod.capture_unit_io(qmodel, unit_name, data.to(device), chunk=16)
    return qmodel.get_submodule(unit_name), x, y


def seconds_per_iter(unit, x, y, method: str, eager: bool, short: int, long: int, repeats: int) -> float:
    def run(iters):
        cfg = recon_mod.make_config(method, "fast", iters=iters, log_every=10 ** 9)
        with eager_quantizers() if eager else contextlib.nullcontext():
            info = recon_mod.reconstruct_unit(copy.deepcopy(unit), x, y, x, cfg, show_progress=False, eval_samples=1)
        return info["seconds"]

    run(2)
    samples = [(run(long) - run(short)) / (long - short) for _ in range(repeats)]
    return sorted(samples)[len(samples) // 2]


def bench(device: torch.device, method: str, short: int, long: int, repeats: int, batch: int) -> List[Dict[str, object]]:
    rows = []
    for model_name, unit_name in (("resnet18", "layer2.0"), ("mobilenet_v2", "features.3")):
        unit, x, y = _unit_and_cache(model_name, unit_name, max(batch, 32), device)
        t_eager = seconds_per_iter(unit, x, y, method, True, short, long, repeats)
        t_zsq = seconds_per_iter(unit, x, y, method, False, short, long, repeats)
        rows.append(dict(harness.environment(device), bench="recon_iteration", model=model_name, unit=unit_name,
                         unit_type=type(unit).__name__, method=method, batch=batch, input=list(x.shape[1:]),
                         wbits=4, abits=4, eager_ms=t_eager * 1e3, zsq_ms=t_zsq * 1e3,
                         eager_it_s=1.0 / t_eager, zsq_it_s=1.0 / t_zsq, speedup=t_eager / t_zsq,
                         threads=torch.get_num_threads() if device.type == "cpu" else None))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--method", default="genie", choices=recon_mod.METHODS)
    parser.add_argument("--quick", action="store_true", help="smoke run (few iterations, nothing written)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    harness.set_cpu_threads_from_env()
    device = torch.device(args.device)
    short, long, repeats = (1, 3, 1) if args.quick else (3, 13, 3)
    rows = bench(device, args.method, short, long, repeats, 32)
    print(harness.markdown_table(rows, ["model", "unit", "method", "eager_ms", "zsq_ms", "eager_it_s", "zsq_it_s",
                                        "speedup"]))
    if not args.no_write and not args.quick:
        print("rows appended to", harness.write_rows("recon", rows))


if __name__ == "__main__":
    main()
