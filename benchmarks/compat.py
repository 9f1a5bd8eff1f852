"""Research-style quantizers with and without ``zsq_engine.compat.accelerate``.

    python -m benchmarks.compat --device cpu            # CPU rows (C++ extension)
    python -m benchmarks.compat --device cuda           # GPU rows (Triton kernels)
    python -m benchmarks.compat --device cpu --quick    # tiny shapes, a smoke run (nothing written)
    python -m benchmarks.compat --device cpu --only block   # only the reconstruction-step rows

Two groups of rows, appended to benchmarks/results/compat.jsonl:

* ``compat fwd+bwd``: one quantizer's forward + backward (input and every learnable parameter),
  the original module against the same module after ``accelerate`` (weights [512,256,3,3]
  per-channel, activations [64,256,28,28] per-tensor);
* ``compat brecq block step``: one BRECQ/QDrop-style reconstruction step on a ResNet-18 block
  (layer2, 128 channels, 28x28, batch 32; BN folded): AdaRound weights (soft) and LSQ-style
  activation step sizes of both convs, ``lp_loss`` + rounding regulariser, backward, Adam step.
  The accelerated run also swaps ``lp_loss`` for ``compat.lp_loss``. The convolutions are the
  same in both runs, so the step's speed-up is bounded by the share of time the quantizers take;
  a third row, ``no quantizers (bound)``, times the same step with every quantizer an identity
  (convolutions with their weight and input gradients, ReLU, residual, loss, regulariser, Adam
  only): no accelerated quantizer can beat it.

Each group also has ``accelerated exact=False`` rows (``accelerate(model, exact=False)``: the
BRECQ uniform and QDrop LSQ / LSQ+ quantizers as one fused kernel per direction, last-bit
tolerance) where the style has such a mode.

The original quantizers are the test suite's re-implementations (tests/_support/compat_refs.py),
so the benchmark times exactly what the parity tests check.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import nn

from benchmarks import harness
from zsq_engine import compat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _support import compat_refs as refs  # noqa: E402

BITS = 4


def _calibrated_lsq(cls, x, ch_axis=-1, drop_prob=1.0):
    q = cls(bit=BITS, ch_axis=ch_axis).to(x.device)
    q.observer_enabled, q.fake_quant_enabled = 1, 1
    with torch.no_grad():
        q(x)
    q.observer_enabled = 0
    q.drop_prob = drop_prob
    return q


def _ao_learnable(x):
    from torch.ao.quantization import MovingAverageMinMaxObserver
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    q = _LearnableFakeQuantize(MovingAverageMinMaxObserver, quant_min=0, quant_max=2 ** BITS - 1,
                               use_grad_scaling=True, dtype=torch.quint8).to(x.device)
    with torch.no_grad():
        q(x)
    q.enable_param_learning()
    return q


def _ao_fake_quantize(x):
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

    q = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=2 ** BITS - 1,
                     dtype=torch.quint8).to(x.device)
    with torch.no_grad():
        q(x)
    q.disable_observer()
    return q


def _uaq(x, **kw):
    q = refs.UniformAffineQuantizer(BITS, **kw).to(x.device)
    q(x.detach())  # lazy init
    return q


def _adaround(w):
    q = refs.AdaRoundQuantizer(_uaq(w, channel_wise=True), w)  # every tensor on w's device
    q.soft_targets = True
    return q


def _genie_weight(w):
    q = refs.GenieWeightQuantizer(w)  # every tensor on w's device
    q.train_mode = True
    return q


def _genie_activation(a):
    q = refs.GenieActivationQuantizer(BITS)
    q(a.detach())  # lazy init
    q.train_mode = True  # QDrop on, as during reconstruction
    return q


def quantizer_cases(device, quick: bool):
    act_shape = (4, 16, 8, 8) if quick else (64, 256, 28, 28)
    w_shape = (32, 16, 3, 3) if quick else (512, 256, 3, 3)
    a = torch.randn(act_shape, device=device).relu()
    w = torch.randn(w_shape, device=device) * 0.05
    return [
        ("brecq UniformAffine act (leaf delta)", "act", a, lambda: _uaq(a, leaf_param=True)),
        ("brecq UniformAffine weight per-channel", "weight", w, lambda: _uaq(w, channel_wise=True)),
        ("brecq AdaRound soft weight", "weight", w, lambda: _adaround(w)),
        ("qdrop LSQ act p=0.5", "act", a, lambda: _calibrated_lsq(refs.LSQFakeQuantize, a, drop_prob=0.5)),
        ("qdrop LSQ+ act", "act", a, lambda: _calibrated_lsq(refs.LSQPlusFakeQuantize, a)),
        ("qdrop LSQ weight per-channel", "weight", w, lambda: _calibrated_lsq(refs.LSQFakeQuantize, w, ch_axis=0)),
        ("genie weight soft", "none", w, lambda: _genie_weight(w)),
        ("genie activation QDrop", "act", a, lambda: _genie_activation(a)),
        ("torch.ao FakeQuantize act", "act", a, lambda: _ao_fake_quantize(a)),
        ("torch.ao _LearnableFakeQuantize act", "act", a, lambda: _ao_learnable(a)),
    ]


def _fwd_bwd(module, x, kind) -> Callable[[], object]:
    params = [p for p in module.parameters() if p.requires_grad]
    inp = x.detach().clone().requires_grad_(kind != "none")  # weights are Parameters: they get a gradient too
    dy = torch.randn_like(x)

    def step():
        y = module() if kind == "none" else module(inp)
        targets = params + ([inp] if kind != "none" else [])
        return torch.autograd.grad(y, targets, dy) if targets else y

    return step


def run_quantizers(device, quick: bool) -> List[Dict]:
    rows, env = [], harness.environment(device)
    for label, kind, x, make in quantizer_cases(device, quick):
        original = make()
        accelerated = copy.deepcopy(original)
        report = compat.accelerate(accelerated)
        style = report.accelerated[0][1] if report.accelerated else None
        contenders = [("original", original), ("accelerated", accelerated)]
        if style in compat.FAST_STYLES:
            fast = copy.deepcopy(original)
            compat.accelerate(fast, exact=False)
            contenders.append(("accelerated exact=False", fast))
        times = {name: harness.time_fn(_fwd_bwd(m, x, kind), device) for name, m in contenders}
        for name, seconds in times.items():
            rows.append({**env, "benchmark": "compat fwd+bwd", "case": label, "style": style, "impl": name,
                         "shape": list(x.shape), "dtype": "float32", "bits": BITS, "median_ms": seconds * 1e3,
                         "speedup_vs_original": times["original"] / seconds})
    return rows


class QuantConv(nn.Module):
    """BRECQ QuantModule: conv (BN folded) with an AdaRound weight and an activation quantizer."""

    def __init__(self, conv: nn.Conv2d, relu: bool, act_input: torch.Tensor):
        super().__init__()
        self.conv, self.relu = conv, relu
        self.bypass = False  # True: quantizers are identities (the bound row)
        w = conv.weight.detach()
        self.weight_quantizer = _adaround(w)
        out = nn.functional.conv2d(act_input, w, conv.bias, padding=1)
        self.act_quantizer = _uaq(out.relu() if relu else out, leaf_param=True)

    def forward(self, x, residual=None):
        w = self.conv.weight if self.bypass else self.weight_quantizer(self.conv.weight)
        y = nn.functional.conv2d(x, w, self.conv.bias, padding=1)
        if residual is not None:
            y = y + residual
        y = y.relu() if self.relu else y
        return y if self.bypass else self.act_quantizer(y)


class QuantBasicBlock(nn.Module):
    def __init__(self, channels: int, x: torch.Tensor):
        super().__init__()
        conv1 = nn.Conv2d(channels, channels, 3, padding=1).to(x.device)
        conv2 = nn.Conv2d(channels, channels, 3, padding=1).to(x.device)
        with torch.no_grad():
            h = nn.functional.conv2d(x, conv1.weight, conv1.bias, padding=1).relu()
        self.layer1 = QuantConv(conv1, True, x)
        self.layer2 = QuantConv(conv2, True, h)
        for p in (conv1.weight, conv1.bias, conv2.weight, conv2.bias):
            p.requires_grad_(False)

    def forward(self, x):
        return self.layer2(self.layer1(x), residual=x)


def _recon_step(block, x, target, loss_fn):
    alphas = [block.layer1.weight_quantizer.alpha, block.layer2.weight_quantizer.alpha]
    deltas = [block.layer1.act_quantizer.delta, block.layer2.act_quantizer.delta]
    opt = torch.optim.Adam([{"params": alphas, "lr": 1e-3}, {"params": deltas, "lr": 4e-5}])

    def step():
        opt.zero_grad(set_to_none=True)
        out = block(x)
        reg = sum((1 - (2 * refs.rectified_sigmoid_ref(a) - 1).abs().pow(20.0)).sum() for a in alphas)
        loss = loss_fn(out, target, p=2.0) + 0.01 * reg
        loss.backward()
        opt.step()
        return loss

    return step


def run_block(device, quick: bool) -> List[Dict]:
    batch, channels, size = (2, 16, 8) if quick else (32, 128, 28)
    x = torch.randn(batch, channels, size, size, device=device).relu()
    original = QuantBasicBlock(channels, x)
    accelerated = copy.deepcopy(original)
    report = compat.accelerate(accelerated)
    fast = copy.deepcopy(original)
    compat.accelerate(fast, exact=False)
    bound = copy.deepcopy(original)
    bound.layer1.bypass = bound.layer2.bypass = True
    # the weights still need their gradient (AdaRound's logits reach them through the weight):
    # otherwise the bound would skip the convolutions' weight and input backward passes
    for layer in (bound.layer1, bound.layer2):
        layer.conv.weight.requires_grad_(True)
    target = torch.randn(batch, channels, size, size, device=device).relu()
    times = {"original": harness.time_fn(_recon_step(original, x, target, refs.lp_loss_ref), device),
             "accelerated": harness.time_fn(_recon_step(accelerated, x, target, compat.lp_loss), device),
             "accelerated exact=False": harness.time_fn(_recon_step(fast, x, target, compat.lp_loss), device),
             "no quantizers (bound)": harness.time_fn(_recon_step(bound, x, target, compat.lp_loss), device)}
    env = harness.environment(device)
    return [{**env, "benchmark": "compat brecq block step", "case": f"resnet18 block {channels}ch {size}x{size} b{batch}",
             "impl": name, "accelerated_quantizers": len(report.accelerated) if name.startswith("accelerated") else 0,
             "shape": [batch, channels, size, size],
             "dtype": "float32", "bits": BITS, "median_ms": s * 1e3, "speedup_vs_original": times["original"] / s}
            for name, s in times.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, smoke run; writes nothing")
    parser.add_argument("--no-write", action="store_true", help="print only, do not append result rows")
    parser.add_argument("--only", choices=("quantizers", "block"),
                        help="run one group of rows: the per-quantizer fwd+bwd rows or the block step (default both)")
    args = parser.parse_args(argv)
    harness.set_cpu_threads_from_env()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.manual_seed(0)
    rows = [] if args.only == "block" else run_quantizers(device, args.quick)
    rows += [] if args.only == "quantizers" else run_block(device, args.quick)
    print(harness.markdown_table(rows, ["benchmark", "case", "impl", "median_ms", "speedup_vs_original"]), flush=True)
    if not (args.no_write or args.quick):
        print("rows appended to", harness.write_rows("compat", rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
