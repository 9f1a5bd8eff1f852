"""One per-tensor activation grid, the record the integer runtime keeps per quantized value and the
CPU kernels' fused codes output takes (``codes=`` of ``prepare_conv`` / ``prepare_linear``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ActQParams"]


@dataclass(frozen=True)
class ActQParams:
    """One per-tensor activation grid: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``.

    ``scale`` is the fp32 value as a python float (exact), the rest python ints. Stored as
    ``int8`` when ``qmin < 0`` (signed grids), else ``uint8``; 4-bit grids use the low values
    of those bytes. The kernels' codes output computes
    ``clamp(round_half_even(v * fp32(1/scale)) + zero_point, qmin, qmax)``, the fake-quant op's
    arithmetic.
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
