"""GDFQ-style conditional generator, trained against a frozen teacher with
CE(teacher(G(z, y)), y) + 0.1 * BNS ('gdfq' BN variant), Adam lr 1e-3, betas (0.5, 0.999).

:func:`train_generator` returns the trained generator; :func:`sample` draws labelled images
from it (also used by generator-based QAT). :func:`synthesize_batch` is the per-batch entry of
:func:`zsq_engine.synth.synthesize`, which trains the generator once and then samples batches.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops.conv_forms import conv2d_narrow_aware
from ..utils import BNInputRecorder, frozen_teacher
from .loop import BatchResult, IterationBar, measure_bn_loss

__all__ = ["DEFAULTS", "UpsamplingGenerator", "GDFQGenerator", "train_generator", "sample", "synthesize_batch"]

DEFAULTS = {"iters": 4000, "latent_dim": 100, "lr": 1e-3, "betas": [0.5, 0.999], "bns_weight": 0.1,
            "train_batch_size": 64}


class UpsamplingGenerator(nn.Module):
    """The DCGAN-style trunk of the GDFQ and ZAQ generators: ``decode(h [N, latent_dim])`` ->
    images [N, C, H, W] in normalised input space.

    Linear -> 128 x ceil(H/4) x ceil(W/4) -> BN -> up x2 -> conv3x3 128->128 -> BN(hidden_eps)
    -> LeakyReLU(0.2) -> up x2 -> conv3x3 128->64 -> BN(hidden_eps) -> LeakyReLU(0.2) ->
    conv3x3 64->C -> tanh -> BN(C, affine=False) (matches the teacher's input statistics per
    channel); resized to H x W when H or W is not a multiple of 4. ``fast_convs`` (default True)
    computes the convolutions with :func:`~zsq_engine.ops.upsample2x_conv3x3` /
    :func:`~zsq_engine.ops.conv3x3_narrow`: same parameters, same function up to float rounding. With ``num_classes`` a label
    embedding ``embed`` is created first (before ``fc``, so the parameter order and the random
    initialisation are those of the original generators).
    """

    def __init__(self, input_shape: Sequence[int], latent_dim: int, hidden_eps: float,
                 num_classes: Optional[int] = None) -> None:
        super().__init__()
        c, h, w = input_shape
        self.latent_dim = latent_dim
        self.out_hw = (h, w)
        self.init_hw = (math.ceil(h / 4), math.ceil(w / 4))
        if num_classes is not None:
            self.embed = nn.Embedding(num_classes, latent_dim)
        self.fc = nn.Linear(latent_dim, 128 * self.init_hw[0] * self.init_hw[1])
        self.bn0 = nn.BatchNorm2d(128)
        self.conv1 = nn.Conv2d(128, 128, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(128, eps=hidden_eps)
        self.conv2 = nn.Conv2d(128, 64, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(64, eps=hidden_eps)
        self.conv3 = nn.Conv2d(64, c, 3, padding=1)
        self.bn_out = nn.BatchNorm2d(c, affine=False)
        # True: the same function with fewer operations (float rounding aside): upsample + conv as
        # four 2x2 phase convolutions of the low-res input (ops.upsample2x_conv3x3, 4/9 of the
        # multiply-adds) and, on CPU, the narrow output conv as one GEMM (ops.conv3x3_narrow).
        # False: interpolate, then nn.Conv2d, as the original generators (the benchmarks' eager side)
        self.fast_convs = True

    def _up_conv(self, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        if self.fast_convs:
            return ops.upsample2x_conv3x3(x, conv.weight, conv.bias)
        return conv(F.interpolate(x, scale_factor=2, mode="nearest"))

    def _out_conv(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_convs:
            c = self.conv3
            return conv2d_narrow_aware(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)
        return self.conv3(x)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        x = self.fc(h).view(h.shape[0], 128, *self.init_hw)
        x = F.leaky_relu(self.bn1(self._up_conv(self.bn0(x), self.conv1)), 0.2)
        x = F.leaky_relu(self.bn2(self._up_conv(x, self.conv2)), 0.2)
        x = torch.tanh(self._out_conv(x))
        if tuple(x.shape[-2:]) != self.out_hw:
            x = F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=False)
        return self.bn_out(x)


class GDFQGenerator(UpsamplingGenerator):
    """(z [N, latent_dim], y [N] int64) -> images [N, C, H, W] in normalised input space.

    label embedding * z -> the :class:`UpsamplingGenerator` trunk with BN eps 0.8 in the two
    hidden BN layers. The eps of 0.8 is a quirk of the original code (the positional argument of
    BatchNorm2d is eps, not momentum), kept for fidelity.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, latent_dim: int = 100) -> None:
        super().__init__(input_shape, latent_dim, hidden_eps=0.8, num_classes=num_classes)
        self.num_classes = num_classes

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.decode(self.embed(labels) * z)


def _generator_loss(teacher: nn.Module, rec: BNInputRecorder, images: torch.Tensor, labels: torch.Tensor,
                    bns_weight: float) -> Tuple[torch.Tensor, torch.Tensor]:
    rec.clear()
    logits = teacher(images)
    bns = ops.bn_stat_loss(*rec.loss_inputs(), variant="gdfq")
    return F.cross_entropy(logits, labels) + bns_weight * bns, bns


def train_generator(teacher: nn.Module, iters: int, input_shape: Sequence[int], num_classes: int,
                    batch_size: int = 64, device: torch.device | str = "cpu", settings: Optional[dict] = None,
                    generator: Optional[GDFQGenerator] = None, show_progress: bool = False,
                    desc: str = "gdfq generator") -> Tuple[GDFQGenerator, dict]:
    """Train a (fresh, unless given) generator for ``iters`` steps of ``batch_size`` against the
    teacher (frozen for the duration). Uses the global RNG. Returns (generator in train mode,
    {'bn_loss_start', 'bn_loss_end'}: the BNS of a clean teacher forward on one sampled batch)."""
    s = {**DEFAULTS, **(settings or {})}
    device = torch.device(device)
    gen = generator if generator is not None else GDFQGenerator(input_shape, num_classes, s["latent_dim"])
    gen = gen.to(device).train()
    opt = torch.optim.Adam(gen.parameters(), lr=s["lr"], betas=tuple(s["betas"]))
    with frozen_teacher(teacher):
        probe_z = torch.randn(batch_size, gen.latent_dim, device=device)
        probe_y = torch.randint(0, num_classes, (batch_size,), device=device)
        with torch.no_grad():
            start = measure_bn_loss(teacher, gen(probe_z, probe_y), "gdfq")
        bar = IterationBar(iters, desc, show_progress)
        with BNInputRecorder(teacher) as rec:
            for it in bar:
                z = torch.randn(batch_size, gen.latent_dim, device=device)
                y = torch.randint(0, num_classes, (batch_size,), device=device)
                opt.zero_grad(set_to_none=True)
                loss, _ = _generator_loss(teacher, rec, gen(z, y), y, s["bns_weight"])
                loss.backward()
                opt.step()
                bar.report(it, loss)
        bar.close()
        with torch.no_grad():
            end = measure_bn_loss(teacher, gen(probe_z, probe_y), "gdfq")
    return gen, {"bn_loss_start": start, "bn_loss_end": end}


@torch.no_grad()
def sample(generator: GDFQGenerator, n: int, labels: Optional[torch.Tensor] = None,
           rng: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` images [n, C, H, W] (float32, generator's device) and their labels [n] int64.

    Labels are uniform over the classes unless given. The generator runs with batch-statistics
    BN (the mode it was trained in); its running statistics are left exactly as they were.
    """
    device = next(generator.parameters()).device
    if labels is None:
        labels = torch.randint(0, generator.num_classes, (n,), generator=rng, device="cpu").to(device)
    elif labels.shape != (n,):
        raise ValueError(f"labels must have shape [{n}], got {tuple(labels.shape)}")
    labels = labels.to(device=device, dtype=torch.int64)
    z = torch.randn(n, generator.latent_dim, generator=rng, device="cpu").to(device)
    saved = {k: v.clone() for k, v in generator.state_dict().items() if "running_" in k or "num_batches" in k}
    was_training = generator.training
    generator.train()
    try:
        images = generator(z, labels)
    finally:
        generator.load_state_dict(saved, strict=False)
        generator.train(was_training)
    return images.float(), labels


def synthesize_batch(teacher: nn.Module, batch_size: int, generator: GDFQGenerator,
                     device: torch.device) -> BatchResult:
    """Sample one batch from an already-trained generator (global RNG) and measure its BN loss
    (``bn_loss_start`` is NaN here: the start value belongs to the generator training)."""
    images, labels = sample(generator, batch_size)
    return BatchResult(images.cpu(), labels.cpu(), float("nan"), measure_bn_loss(teacher, images, "gdfq"))
