"""Generator-based QAT training iterations per second: zsq_engine vs an eager implementation of the
same loop (GDFQ, ZAQ, HAST).

    python -m benchmarks.qat --device cpu      # Fashion-MNIST ResNet, batch 64
    python -m benchmarks.qat --device cuda     # ResNet-18 at 224x224, batch 64
    python -m benchmarks.qat --device cpu --quick

One iteration is what :meth:`zsq_engine.qat.QATTrainer.train_epoch` does per step: a student
step, plus a generator step where the method schedules one (GDFQ every step, ZAQ every 5th), plus
the lr schedulers. Both sides run the same trainer (same models, generator, losses, optimisers);
the eager side swaps in what the reference repositories do:

* fake-quant: every student quantizer calls PyTorch's own learnable fake-quant
  (``torch._fake_quantize_learnable_per_{tensor,channel}_affine``: a host sync per call and
  full-size gradient temporaries) instead of the fused ``zsq_engine.ops.lsq_fake_quant``;
* GDFQ's BN-statistics loss: per-layer hook tensors reduced in Python
  (:func:`benchmarks.bn_stats.eager_loss`) instead of the batched ``ops.bn_stat_loss``;
* ZAQ's spatial relation: the HW x HW attention matrix materialised (as ZAQ's code) instead of
  ``ops.self_attention`` (C++ kernel on CPU) / SDPA (CUDA);
* the generator's convolutions: nearest x2 upsample, then the 3x3 convolution, and the output
  convolution as ``nn.Conv2d`` (as the reference generators) instead of
  ``ops.upsample2x_conv3x3`` (four 2x2 phase convolutions of the low-resolution input: the same
  function in 4/9 of the multiply-adds) and, on CPU, ``ops.conv3x3_narrow`` (one GEMM);
* ZAQ's and HAST's teacher: the model as given (BN layers run) instead of its copy with BN folded
  and narrow convolutions as GEMMs (``zsq_engine.qat.teacher``), and the student's convolutions
  all through ``F.conv2d`` (the 1-channel stem included, which zsq runs as ``ops.conv3x3_narrow``);
* the generator step: ``loss.backward()`` into everything that requires grad (the reference code
  leaves the teacher's parameters trainable and zeroes the student's stray gradients afterwards)
  instead of ``autograd.grad`` restricted to the generator.

Seconds per iteration = (long run - short run) / (difference in iterations) on one prepared
trainer, which cancels per-call set-up. Random weights on CUDA (speed does not depend on them);
HAST trains on a random pool (its synthesis is benchmarked by benchmarks/synth.py). Rows go to
benchmarks/results/qat.jsonl; ``--quick`` writes nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import time
import types
from typing import Dict, List

import torch
import torch.nn.functional as F

from benchmarks import harness
from benchmarks.bn_stats import eager_loss
from zsq_engine.models import get_model
from zsq_engine.qat import QATTrainer
from zsq_engine.qat import losses as qat_losses
from zsq_engine.qat import methods as qat_methods
from zsq_engine.quant.modules import QuantConv2d
from zsq_engine.quant.quantizer import SCALE_EPS, UniformQuantizer


class EagerFakeQuant(UniformQuantizer):
    """Same state as UniformQuantizer; forward through PyTorch's native fake-quant ops."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        axis = self.spec.resolve_axis(x.dim())
        scale = self.scale.clamp_min(SCALE_EPS)
        if self.learnable:
            gf = self.grad_factor if self.grad_factor is not None else 1.0 / math.sqrt(x.numel() * self.quant_max)
            if axis is None:
                return torch._fake_quantize_learnable_per_tensor_affine(x, scale, self.zero_point, self.quant_min,
                                                                        self.quant_max, gf)
            return torch._fake_quantize_learnable_per_channel_affine(x, scale, self.zero_point, axis,
                                                                     self.quant_min, self.quant_max, gf)
        zp = self.integer_zero_point()
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(x, scale, zp, self.quant_min, self.quant_max)
        return torch.fake_quantize_per_channel_affine(x, scale, zp, axis, self.quant_min, self.quant_max)


class EagerQuantConv2d(QuantConv2d):
    """QuantConv2d with every convolution through ``F.conv2d`` (no GEMM form for narrow ones)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._inputs(x)
        if self._pad is not None:
            return F.conv2d(F.pad(x, self._pad, mode=self.padding_mode), w, self.bias, self.stride, 0,
                            self.dilation, self.groups)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def eager_spatial_relation(f: torch.Tensor, impl: str = "auto", chunk_rows=None) -> torch.Tensor:
    """ZAQ's spatial relation with the [N, HW, HW] attention matrix materialised."""
    n, c, h, w = f.shape
    u = F.normalize(f.reshape(n, c, h * w), dim=1)                 # [N, C, HW]
    attn = torch.softmax(u.transpose(1, 2) @ u, dim=-1)            # [N, HW, HW]
    return 0.1 * (u @ attn.transpose(1, 2)) + u


def _eager_generator_step(tr: QATTrainer) -> torch.Tensor:
    loss = tr.generator_forward()  # same batch, loss and hand-off to the student step as the trainer's
    loss.backward()
    tr.generator_opt.step()
    tr.generator_opt.zero_grad(set_to_none=True)
    tr.student_opt.zero_grad(set_to_none=True)  # the stray student gradients of the adversarial loss
    return loss.detach()


@contextlib.contextmanager
def eager_mode(tr: QATTrainer):
    """Swap the eager pieces (see the module docstring) into one trainer, and back."""
    quantizers = [m for m in tr.student.modules() if isinstance(m, UniformQuantizer)]
    convs = [m for m in tr.student.modules() if type(m) is QuantConv2d]
    saved_ops, saved_spatial = qat_methods.ops, qat_losses.spatial_relation
    for q in quantizers:
        q.__class__ = EagerFakeQuant
    for c in convs:
        c.__class__ = EagerQuantConv2d
    qat_methods.ops = types.SimpleNamespace(bn_stat_loss=lambda a, m, v, variant: eager_loss(a, m, v, variant))
    qat_losses.spatial_relation = eager_spatial_relation
    for p in tr.teacher.parameters():
        p.requires_grad_(True)
    tr.generator_step = types.MethodType(_eager_generator_step, tr)
    folded_teacher, tr.method.teacher = tr.method.teacher, tr.teacher
    if tr.generator is not None:
        tr.generator.fast_convs = False
    try:
        yield tr
    finally:
        del tr.generator_step
        tr.method.teacher = folded_teacher
        if tr.generator is not None:
            tr.generator.fast_convs = True
        for p in tr.teacher.parameters():
            p.requires_grad_(False)
            p.grad = None
        qat_methods.ops, qat_losses.spatial_relation = saved_ops, saved_spatial
        for q in quantizers:
            q.__class__ = UniformQuantizer
        for c in convs:
            c.__class__ = QuantConv2d


def _run(tr: QATTrainer, iters: int, device: torch.device) -> float:
    tr.cfg.iters_per_epoch = iters
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tr.train_epoch()  # reads the loss sums once at its end: the loop itself never syncs
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def seconds_per_iter(tr: QATTrainer, device: torch.device, eager: bool, short: int, long: int,
                     repeats: int) -> float:
    with eager_mode(tr) if eager else contextlib.nullcontext():
        _run(tr, 2, device)  # warm-up (allocator, kernels)
        samples = [(-_run(tr, short, device) + _run(tr, long, device)) / (long - short) for _ in range(repeats)]
    return sorted(samples)[len(samples) // 2]


def _trainer(model, method: str, input_shape, batch: int, device: torch.device) -> QATTrainer:
    num_classes = model.fc.out_features
    pool = (torch.randn(256, *input_shape), torch.randint(0, num_classes, (256,))) if method == "hast" else None
    tr = QATTrainer(model, method, 4, 4, input_shape=input_shape, num_classes=num_classes, preset="fast", seed=0,
                    device=device, pool=pool, batch_size=batch, calib_batches=1, gen_warmup_iters=0,
                    act_calibration="minmax", epochs=10 ** 6)
    tr.prepare()
    return tr


def bench(device: torch.device, methods: List[str], batch: int, short: int, long: int,
          repeats: int) -> List[Dict[str, object]]:
    name = "resnet18" if device.type == "cuda" else "fmnist_resnet"
    input_shape = (3, 224, 224) if device.type == "cuda" else (1, 28, 28)
    model = get_model(name, pretrained=name == "fmnist_resnet").eval()
    rows = []
    for method in methods:
        t = {}
        for eager in (True, False):
            tr = _trainer(model, method, input_shape, batch, device)
            try:
                t[eager] = seconds_per_iter(tr, device, eager, short, long, repeats)
            finally:
                tr.close()
        rows.append(dict(harness.environment(device), bench="qat_iteration", model=name, method=method,
                         batch=batch, input=list(input_shape), wbits=4, abits=4,
                         student_steps_per_gen=tr.cfg.student_steps_per_gen if tr.generator is not None else None,
                         eager_ms=t[True] * 1e3, zsq_ms=t[False] * 1e3, eager_it_s=1.0 / t[True],
                         zsq_it_s=1.0 / t[False], speedup=t[True] / t[False], iters_timed=long - short,
                         threads=torch.get_num_threads() if device.type == "cpu" else None))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", nargs="+", default=["gdfq", "zaq", "hast"], choices=["gdfq", "zaq", "hast"])
    parser.add_argument("--quick", action="store_true", help="smoke run (batch 8, few iterations, nothing written)")
    parser.add_argument("--no-write", action="store_true", help="print the table, append no rows")
    args = parser.parse_args(argv)
    harness.set_cpu_threads_from_env()
    device = torch.device(args.device)
    if args.quick:
        batch, short, long, repeats = 8, 2, 7, 1
    else:
        batch, short, long, repeats = 64, 5, 25, 3
    rows = bench(device, args.methods, batch, short, long, repeats)
    print(harness.markdown_table(rows, ["model", "method", "batch", "eager_ms", "zsq_ms", "eager_it_s", "zsq_it_s",
                                        "speedup"]))
    if not args.no_write and not args.quick:
        print("rows appended to", harness.write_rows("qat", rows))


if __name__ == "__main__":
    main()
