"""The quantizer protocol: what a fake-quantizer module (quant's UniformQuantizer, also used by
QAT students, and recon's AdaRound / LSQ quantizers) tells the integer runtime about its integer
grid, so the runtime reads any quantizer without knowing its class (docs/architecture.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, runtime_checkable

import torch

__all__ = ["IntegerGrid", "GridQuantizer", "WeightGridQuantizer", "QuantizerNotReady"]


class QuantizerNotReady(ValueError):
    """The quantizer cannot give its grid yet: ``reason`` completes "its ... quantizer <reason>",
    ``hint`` says what to do."""

    def __init__(self, reason: str, hint: str = "") -> None:
        self.reason, self.hint = reason, hint
        super().__init__(reason + (f"; {hint}" if hint else ""))


@dataclass(frozen=True)
class IntegerGrid:
    """``q = clamp(round(x / scale) + zero_point, qmin, qmax)``, ``x_hat = (q - zero_point) * scale``.

    ``scale`` fp32 ``[k]`` (already clamped to the quantizer's minimum), ``zero_point`` fp32 ``[k]``
    holding integers inside ``[qmin, qmax]``; ``k == 1`` per tensor. ``per_channel`` and
    ``axis``: the channel axis, resolved for the tensor's rank when one was given, None per tensor.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    per_channel: bool = False
    axis: Optional[int] = None

    @property
    def signed(self) -> bool:
        return self.qmin < 0

    @property
    def bits(self) -> int:
        return int(self.qmax - self.qmin).bit_length()


@runtime_checkable
class GridQuantizer(Protocol):
    """A fake-quantizer that can state its integer grid (activations and weights)."""

    enabled: bool

    def integer_grid(self, ndim: Optional[int] = None) -> IntegerGrid:
        """The grid as the forward uses it on a tensor of rank ``ndim`` (None: rank unknown).
        Raises :class:`QuantizerNotReady` while the grid is not final (uncalibrated, QDrop)."""
        ...


@runtime_checkable
class WeightGridQuantizer(GridQuantizer, Protocol):
    """A weight quantizer that also gives the integer codes of the weight it fake-quantizes."""

    def integer_codes(self, weight: torch.Tensor) -> torch.Tensor:
        """int32 codes ``q``, shaped like ``weight``, with ``(q - z) * s`` equal to the fake-quantized
        weight. Raises ValueError when no such codes exist."""
        ...
