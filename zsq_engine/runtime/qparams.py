"""Integer parameters read out of a fake-quant layer: activation grids and integer weights.

The fake-quant model is the specification. Its activation quantizers
(:class:`zsq_engine.quant.UniformQuantizer`, or the reconstruction-time
:class:`zsq_engine.recon.LSQActQuantizer`) give one per-tensor grid ``(scale, zero_point,
quant_min, quant_max)`` per quantized layer input; its weight quantizers give the integer
weight codes. For a plain quantizer the codes are recovered from the fake-quantized weight the
model itself computes (``w_hat = (q - z) * s`` in fp32, so ``round(w_hat / s) + z`` is exactly
``q``); for an AdaRound quantizer they are its HARD-rounded codes, whatever mode it is in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from ..quant.quantizer import SCALE_EPS, UniformQuantizer

__all__ = ["ActQParams", "act_qparams", "integer_weight"]


@dataclass(frozen=True)
class ActQParams:
    """One per-tensor activation grid: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``.

    ``scale`` is the fp32 value as a python float (exact), the rest python ints. Stored as
    ``int8`` when ``qmin < 0`` (signed grids), else ``uint8``; 4-bit grids use the low values
    of those bytes.
    """

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @property
    def dtype(self) -> torch.dtype:
        return torch.int8 if self.qmin < 0 else torch.uint8

    @property
    def bits(self) -> int:
        return int(self.qmax - self.qmin).bit_length()

    def to_dict(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point, "qmin": self.qmin, "qmax": self.qmax}

    @classmethod
    def from_dict(cls, d: dict) -> "ActQParams":
        return cls(float(d["scale"]), int(d["zero_point"]), int(d["qmin"]), int(d["qmax"]))

    def short(self) -> str:
        return f"{'int' if self.qmin < 0 else 'uint'}{self.bits}(s={self.scale:.4g}, z={self.zero_point})"


def _fp32(v: float) -> float:
    return float(torch.tensor(float(v), dtype=torch.float32))


def act_qparams(quantizer: Optional[nn.Module], where: str) -> Optional[ActQParams]:
    """The grid of an input-activation quantizer, or None when the input stays float.

    ``where`` names the layer in errors. A disabled quantizer means float input (the fake-quant
    model passes the input through unchanged)."""
    if quantizer is None or not getattr(quantizer, "enabled", True):
        return None
    from ..recon.quantizers import LSQActQuantizer

    if isinstance(quantizer, UniformQuantizer):
        if quantizer.observer is not None:
            raise ValueError(f"{where}: its activation quantizer is still calibrating (an observer is attached)")
        if not quantizer.calibrated:
            raise ValueError(f"{where}: its activation quantizer is not calibrated; calibrate the model first "
                             "(zsq_engine.quant.calibrate_activations)")
        if quantizer.spec.per_channel:
            raise ValueError(f"{where}: per-channel activation quantization is not supported by the integer "
                             "runtime (the kernels take one activation scale per tensor)")
        scale, zp = quantizer.qparams()
    elif isinstance(quantizer, LSQActQuantizer):
        if quantizer.dropping:
            raise ValueError(f"{where}: its LSQActQuantizer is in QDrop mode (dropping=True); finish the "
                             "reconstruction first")
        scale = quantizer.scale.detach().float().clamp_min(SCALE_EPS)
        zp = torch.round(quantizer.zero_point.detach().float()).clamp(quantizer.quant_min, quantizer.quant_max)
    else:
        raise ValueError(f"{where}: activation quantizer of type {type(quantizer).__name__} is not supported "
                         "(expected UniformQuantizer or LSQActQuantizer)")
    if scale.numel() != 1:
        raise ValueError(f"{where}: activation quantizer has {scale.numel()} scales, expected one (per tensor)")
    return ActQParams(_fp32(scale.reshape(-1)[0].item()), int(zp.reshape(-1)[0].item()),
                      int(quantizer.quant_min), int(quantizer.quant_max))


def _channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.reshape(-1, *([1] * (ndim - 1)))


@torch.no_grad()
def integer_weight(layer: nn.Module, where: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """``(codes int32 [O, ...], scale fp32 [O], zero_point int32 [O], qmin, qmax)`` of a QuantLayer.

    Per-tensor grids are broadcast to every output channel. Raises ValueError naming ``where``
    for float weights, per-channel grids on another axis, or codes that do not reproduce the
    fake-quantized weight."""
    from ..recon.quantizers import AdaRoundWeightQuantizer

    wq = layer.weight_quantizer
    weight = layer.weight.detach()
    out_ch = weight.shape[0]
    if wq is None or not getattr(wq, "enabled", True):
        raise ValueError(f"{where}: its weights are not quantized (no enabled weight quantizer); the integer "
                         "runtime needs integer weights")
    if isinstance(wq, AdaRoundWeightQuantizer):
        if wq.axis not in (None, 0):
            raise ValueError(f"{where}: per-channel weight grids must be along axis 0, got axis {wq.axis}")
        codes = wq.integer_weight()
        scale = wq.scale.detach().float().clamp_min(SCALE_EPS).reshape(-1)
        zp = torch.round(wq.zero_point.detach().float()).clamp(wq.quant_min, wq.quant_max).reshape(-1)
        qmin, qmax = wq.quant_min, wq.quant_max
    elif isinstance(wq, UniformQuantizer):
        if wq.observer is not None or not wq.calibrated:
            raise ValueError(f"{where}: its weight quantizer is not calibrated")
        axis = wq.spec.resolve_axis(weight.dim())
        if axis not in (None, 0):
            raise ValueError(f"{where}: per-channel weight grids must be along axis 0 (output channels), "
                             f"got axis {axis}")
        scale, zp = wq.qparams()
        scale, zp = scale.float().reshape(-1), zp.float().reshape(-1)
        qmin, qmax = wq.quant_min, wq.quant_max
        # The model's own fake-quantized weight is the reference: recover its integer codes.
        w_hat = wq(weight).float()
        codes = torch.round(w_hat / _channel_view(scale, w_hat.dim())) + _channel_view(zp, w_hat.dim())
        codes = codes.clamp(qmin, qmax)
        back = (codes - _channel_view(zp, w_hat.dim())) * _channel_view(scale, w_hat.dim())
        if not torch.equal(back, w_hat):
            raise ValueError(f"{where}: the integer weight codes do not reproduce the fake-quantized weight "
                             f"(max error {float((back - w_hat).abs().max()):.3g})")
        codes = codes.to(torch.int32)
    else:
        raise ValueError(f"{where}: weight quantizer of type {type(wq).__name__} is not supported "
                         "(expected UniformQuantizer or AdaRoundWeightQuantizer)")
    if scale.numel() == 1:
        scale, zp = scale.expand(out_ch).clone(), zp.expand(out_ch).clone()
    if scale.numel() != out_ch:
        raise ValueError(f"{where}: weight quantizer has {scale.numel()} scales for {out_ch} output channels")
    return codes, scale.contiguous(), zp.to(torch.int32).contiguous(), int(qmin), int(qmax)
