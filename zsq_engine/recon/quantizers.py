"""Reconstruction-time quantizers (:class:`AdaRoundWeightQuantizer`, :class:`LSQActQuantizer` with
QDrop), built on the fused ops of :mod:`zsq_engine.ops`. Conventions: docs/recon.md.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .. import ops
from ..quant.protocol import IntegerGrid, QuantizerNotReady
from ..quant.quantizer import SCALE_EPS, SpecRange, UniformQuantizer
from ..quant.squant import squant_round

__all__ = ["AdaRoundWeightQuantizer", "LSQActQuantizer", "bake_weight", "bake_act", "GENIE_SEARCH_CANDIDATES",
           "ROUNDING_INITS"]

GENIE_SEARCH_CANDIDATES = 100
ROUNDING_INITS = ("nearest", "squant")
SEARCH_P = 2.4


class AdaRoundWeightQuantizer(SpecRange, nn.Module):
    """AdaRound (BRECQ) / learned-step AdaRound (Genie-M) weight fake-quantizer.

    Args:
        weight: float weight ``[C_out, ...]`` (per-channel along axis 0) the rounding is learned for.
        template: the calibrated :class:`UniformQuantizer` of that weight; gives the grid
            (bits, range, per-channel) and, unless ``search_scale``, the initial ``(s0, z)``.
        learn_scale: make the step ``s`` an ``nn.Parameter`` (Genie-M); else a fixed buffer.
        search_scale: re-initialise ``(s0, z)`` by the ``num_candidates``-ratio Lp(2.4) search.
        rounding_init: 'nearest' (AdaRound: ``h`` = the fractional part of ``W / s``) or 'squant'
            (``h`` = the SQuant rounding decision, 0 or 1, see :mod:`zsq_engine.quant.squant`;
            ``alpha`` sits just inside the rectified sigmoid's saturation so gradients still flow).

    State: ``w_floor`` (buffer, same shape as ``weight``), ``alpha`` (Parameter), ``scale``
    ``[C]`` fp32 (Parameter or buffer), ``zero_point`` ``[C]`` fp32 integers (buffer), ``hard``.
    """

    def __init__(self, weight: torch.Tensor, template: UniformQuantizer, *, learn_scale: bool = False,
                 search_scale: bool = False, num_candidates: int = GENIE_SEARCH_CANDIDATES,
                 rounding_init: str = "nearest") -> None:
        super().__init__()
        if rounding_init not in ROUNDING_INITS:
            raise ValueError(f"rounding_init must be one of {ROUNDING_INITS}, got {rounding_init!r}")
        if not isinstance(template, UniformQuantizer):
            raise TypeError(f"template must be a UniformQuantizer, got {type(template).__name__}")
        spec = template.spec
        self.spec = spec
        self.axis = spec.resolve_axis(weight.dim())
        w = weight.detach().float()
        if search_scale:
            scale, zp = ops.scale_search(w, spec.quant_min, spec.quant_max, axis=self.axis,
                                         num_candidates=num_candidates, p=SEARCH_P, symmetric=spec.symmetric)
        else:
            scale, zp = template.qparams()
        scale = scale.detach().float().reshape(-1).clamp_min(SCALE_EPS).to(w.device)
        zp = torch.round(zp.detach().float().reshape(-1)).clamp(spec.quant_min, spec.quant_max).to(w.device)
        w_floor, alpha = ops.adaround_init(w, scale, axis=self.axis)
        if rounding_init == "squant":
            alpha = _squant_alpha(w, w_floor, scale, zp, spec, self.axis).to(alpha.dtype)
        self.register_buffer("w_floor", w_floor)
        self.register_buffer("zero_point", zp)
        self.alpha = nn.Parameter(alpha)
        if learn_scale:
            self.scale = nn.Parameter(scale.clone())
        else:
            self.register_buffer("scale", scale.clone())
        self.learn_scale = learn_scale
        self.hard = False
        self.enabled = True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The fake-quantized weight; the ``weight`` argument only matters when disabled."""
        if not self.enabled:
            return weight
        return ops.adaround_fake_quant(self.w_floor, self.alpha, self.scale.clamp_min(SCALE_EPS), self.zero_point,
                                       self.quant_min, self.quant_max, axis=self.axis, hard=self.hard)

    def regularizer(self, beta: float) -> torch.Tensor:
        """``sum(1 - |2 h(alpha) - 1| ** beta)`` (0-dim fp32)."""
        return ops.adaround_regularizer(self.alpha, beta)

    @torch.no_grad()
    def integer_weight(self) -> torch.Tensor:
        """The hard-rounded integer codes ``clamp(w_floor + (alpha >= 0) + z, qmin, qmax)`` (int32)."""
        z = self.zero_point.reshape(_channel_shape(self.w_floor.dim(), self.axis))
        q = torch.clamp(self.w_floor + (self.alpha >= 0).to(self.w_floor.dtype) + z, self.quant_min, self.quant_max)
        return q.to(torch.int32)

    def integer_grid(self, ndim: Optional[int] = None) -> IntegerGrid:
        """The quantizer protocol's grid (the weight's rank is fixed at construction; ``ndim`` is unused)."""
        return _grid(self, self.axis is not None, self.axis)

    def integer_codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The quantizer protocol's codes: the HARD-rounded ones (:meth:`integer_weight`), whatever
        mode the quantizer is in; ``weight`` is not needed (``w_floor`` holds it)."""
        return self.integer_weight()

    def extra_repr(self) -> str:
        return (f"bits={self.spec.bits}, range=[{self.quant_min}, {self.quant_max}], "
                f"learn_scale={self.learn_scale}, hard={self.hard}")


@torch.no_grad()
def _grid(quantizer, per_channel: bool, axis: Optional[int]) -> IntegerGrid:
    scale = quantizer.scale.detach().float().clamp_min(SCALE_EPS).reshape(-1)
    zp = torch.round(quantizer.zero_point.detach().float()).clamp(quantizer.quant_min, quantizer.quant_max)
    return IntegerGrid(scale, zp.reshape(-1), quantizer.quant_min, quantizer.quant_max, per_channel, axis)


def _squant_alpha(w, w_floor, scale, zp, spec, axis) -> torch.Tensor:
    """Logits whose soft and hard ``h`` both equal SQuant's decision ``codes - z - floor(W/s)``."""
    shape = _channel_shape(w.dim(), axis)
    s = scale.double().reshape(shape)
    z = zp.double().reshape(shape)
    codes = squant_round(w.double() / s + z, spec.quant_min, spec.quant_max)
    up = (codes - z - w_floor.double()) > 0.5
    # sigmoid(log 11) * (zeta - gamma) + gamma = 1: a hair below keeps h in the live range
    a = math.log(11.0) * (1.0 - 1e-6)
    ones = torch.ones_like(w_floor, dtype=torch.float64)
    return torch.where(up, a * ones, -a * ones)


def _channel_shape(ndim: int, axis: Optional[int]):
    if axis is None:
        return ()
    shape = [1] * ndim
    shape[axis] = -1
    return shape


class LSQActQuantizer(SpecRange, nn.Module):
    """Per-tensor activation quantizer with a learned scale and optional QDrop.

    Args:
        template: the calibrated :class:`UniformQuantizer` of this activation (grid, init scale,
            fixed zero point).
        drop_prob: QDrop probability of QUANTIZING an element during reconstruction (0.5 for
            QDrop / Genie); 0 disables dropping (BRECQ, and every evaluation).
        seed: base seed of the QDrop masks; mask of step t uses seed ``seed + t``.
        grad_factor: LSQ scale-gradient factor (1.0 = no gradient scaling).

    ``dropping`` switches QDrop on and off (reconstruction sets it; evaluation leaves it off).
    """

    def __init__(self, template: UniformQuantizer, *, drop_prob: float = 0.0, seed: int = 0,
                 grad_factor: float = 1.0) -> None:
        super().__init__()
        if not isinstance(template, UniformQuantizer):
            raise TypeError(f"template must be a UniformQuantizer, got {type(template).__name__}")
        if template.spec.per_channel:
            raise ValueError("LSQActQuantizer is per-tensor; got a per-channel template")
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob!r}")
        self.spec = template.spec
        scale, zp = template.qparams()
        self.scale = nn.Parameter(scale.detach().float().reshape(1).clone())
        self.register_buffer("zero_point", zp.detach().float().reshape(1).clone())
        self.drop_prob = float(drop_prob)
        self.base_seed = int(seed)
        self.grad_factor = float(grad_factor)
        self.dropping = False
        self.enabled = template.enabled
        self._step = 0
        # first batch row this process holds in a data-parallel step: the QDrop mask is keyed by
        # the element's position in the FULL batch, so each row keeps its 1-process mask
        self.row_offset = 0

    def step(self) -> None:
        """Advance the QDrop seed: the next forward draws a fresh mask (host-side int, no sync)."""
        self._step += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        scale = self.scale.clamp_min(SCALE_EPS)
        if self.dropping and self.drop_prob < 1.0:
            seed = (self.base_seed + self._step) % (2 ** 63)
            offset = self.row_offset * (x.numel() // max(1, x.shape[0])) if self.row_offset else 0
            return ops.qdrop_fake_quant(x, scale, self.zero_point, self.quant_min, self.quant_max, None,
                                        p=self.drop_prob, seed=seed, offset=offset, learnable=True,
                                        grad_factor=self.grad_factor)
        return ops.lsq_fake_quant(x, scale, self.zero_point, self.quant_min, self.quant_max, None,
                                  grad_factor=self.grad_factor)

    def integer_grid(self, ndim: Optional[int] = None) -> IntegerGrid:
        """The quantizer protocol's per-tensor grid; refused while QDrop is mixing float values in."""
        if self.dropping:
            raise QuantizerNotReady("is an LSQActQuantizer in QDrop mode (dropping=True)",
                                    "finish the reconstruction first")
        return _grid(self, False, None)

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, drop_prob={self.drop_prob}, grad_factor={self.grad_factor}"


@torch.no_grad()
def bake_weight(layer_weight: nn.Parameter, quantizer: AdaRoundWeightQuantizer, target: UniformQuantizer) -> None:
    """Write the HARD AdaRound weights into ``layer_weight`` and ``(s, z)`` into ``target``.

    Afterwards ``target(layer_weight) == layer_weight`` bit for bit: the stored weight IS the
    dequantized integer grid point. Raises RuntimeError if that check fails.
    """
    scale = quantizer.scale.detach().float().clamp_min(SCALE_EPS)
    q = quantizer.integer_weight().float()
    z = quantizer.zero_point.reshape(_channel_shape(q.dim(), quantizer.axis))
    s = scale.reshape(_channel_shape(q.dim(), quantizer.axis))
    w_hard = ((q - z) * s).to(layer_weight.dtype)
    quantizer.hard = True
    if not torch.equal(quantizer(layer_weight).to(w_hard.dtype), w_hard):
        raise RuntimeError("hard AdaRound weights do not match their integer codes")
    layer_weight.copy_(w_hard)
    target.set_qparams(scale, quantizer.zero_point)
    if not torch.equal(target(layer_weight), layer_weight):
        raise RuntimeError("baked weights are not exactly on the integer grid of their quantizer")


@torch.no_grad()
def bake_act(quantizer: LSQActQuantizer, target: UniformQuantizer) -> None:
    """Copy the learned scale (and the fixed zero point) into a plain ``UniformQuantizer``."""
    target.set_qparams(quantizer.scale.detach().float().clamp_min(SCALE_EPS), quantizer.zero_point)
    target.enabled = quantizer.enabled
