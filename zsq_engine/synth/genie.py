"""Genie-D data synthesis: a small generator plus learnable latents, both fresh for every batch,
trained so that the teacher's BN inputs match the running statistics ('genie' variant) while
every strided teacher conv "swings" (random reflect-pad-and-crop shift of its input).

Paper defaults: batches of 128, 4000 iterations per batch, latents Adam lr 0.1 with
ReduceLROnPlateau(min_lr 1e-4, patience 100), generator Adam lr 0.01 with ExponentialLR(0.95)
every 100 iterations.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..utils import BNInputRecorder
from .loop import BatchResult, DeferredPlateau, IterationBar, input_stat_loss, measure_bn_loss

__all__ = ["DEFAULTS", "GenieGenerator", "swing_convolutions", "synthesize_batch"]

DEFAULTS = {"iters": 4000, "latent_dim": 256, "lr_latent": 0.1, "lr_generator": 0.01, "min_lr": 1e-4,
            "patience": 100, "gamma": 0.95, "gamma_every": 100, "swing": True}


class GenieGenerator(nn.Module):
    """z [N, latent_dim] -> images [N, C, H, W] in normalised input space.

    Linear -> 128 x ceil(H/4) x ceil(W/4) -> BN -> up x2 -> conv3x3 128->64 -> BN -> LeakyReLU(0.2)
    -> up x2 -> conv3x3 64->C -> tanh -> BN(C, affine=False). For 28x28 the feature maps go
    7 -> 14 -> 28; sizes not divisible by 4 are resized to (H, W) before the last BN.
    """

    def __init__(self, input_shape: Sequence[int], latent_dim: int = 256) -> None:
        super().__init__()
        c, h, w = input_shape
        self.out_hw = (h, w)
        self.init_hw = (math.ceil(h / 4), math.ceil(w / 4))
        self.fc = nn.Linear(latent_dim, 128 * self.init_hw[0] * self.init_hw[1])
        self.bn0 = nn.BatchNorm2d(128)
        self.conv1 = nn.Conv2d(128, 64, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, c, 3, padding=1)
        self.bn_out = nn.BatchNorm2d(c, affine=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.fc(z).view(z.shape[0], 128, *self.init_hw))
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.leaky_relu(self.bn1(self.conv1(x)), 0.2)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = torch.tanh(self.conv2(x))
        if tuple(x.shape[-2:]) != self.out_hw:
            x = F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=False)
        return self.bn_out(x)


def _strided_convs(model: nn.Module) -> List[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and max(m.stride) > 1]


@contextlib.contextmanager
def swing_convolutions(model: nn.Module, generator: torch.Generator = None) -> Iterator[int]:
    """Inside the block, every strided Conv2d of ``model`` sees its input reflect-padded by 1 and
    cropped back to the original size at a random offset (0..2 in each direction, one offset per
    forward for the whole batch, drawn from ``generator`` or the global RNG). Implemented with
    forward pre-hooks, so the model is untouched once the block exits. Yields the number of convs.
    """
    def hook(_module, args):
        x = args[0]
        h, w = x.shape[-2:]
        oy, ox = torch.randint(0, 3, (2,), generator=generator).tolist()
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return (padded[..., oy:oy + h, ox:ox + w],) + tuple(args[1:])

    convs = _strided_convs(model)
    handles = [m.register_forward_pre_hook(hook) for m in convs]
    try:
        yield len(convs)
    finally:
        for h in handles:
            h.remove()


def synthesize_batch(teacher: nn.Module, batch_size: int, input_shape: Sequence[int], num_classes: int,
                     settings: dict, device: torch.device, show_progress: bool = False,
                     desc: str = "genie") -> BatchResult:
    """One batch with a fresh generator and fresh latents, from the global RNG (caller seeds it).
    The swing offsets come from a CPU generator seeded from the global RNG, so they are
    reproducible on any device."""
    s = {**DEFAULTS, **settings}
    gen = GenieGenerator(input_shape, s["latent_dim"]).to(device).train()
    z = torch.randn(batch_size, s["latent_dim"], device=device).requires_grad_(True)
    swing_rng = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,)).item()))
    with torch.no_grad():
        start = measure_bn_loss(teacher, gen(z), "genie")
    opt_z = torch.optim.Adam([z], lr=s["lr_latent"])
    sched_z = DeferredPlateau(opt_z, device, min_lr=s["min_lr"], patience=s["patience"])
    opt_g = torch.optim.Adam(gen.parameters(), lr=s["lr_generator"])
    sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=s["gamma"])
    bar = IterationBar(s["iters"], desc, show_progress)
    swing = swing_convolutions(teacher, swing_rng) if s["swing"] else contextlib.nullcontext()
    with swing, BNInputRecorder(teacher) as rec:
        for it in bar:
            opt_z.zero_grad(set_to_none=True)
            opt_g.zero_grad(set_to_none=True)
            x = gen(z)
            rec.clear()
            teacher(x)
            loss = ops.bn_stat_loss(*rec.loss_inputs(), variant="genie") + input_stat_loss(x)
            loss.backward()
            opt_z.step()
            opt_g.step()
            sched_z.step(loss.detach())
            if (it + 1) % s["gamma_every"] == 0:
                sched_g.step()
            bar.report(it, loss)
    bar.close()
    with torch.no_grad():
        images = gen(z)  # batch-statistics BN, as during training; the generator is discarded after
    return BatchResult(images.float().cpu(), None, start, measure_bn_loss(teacher, images, "genie"))
