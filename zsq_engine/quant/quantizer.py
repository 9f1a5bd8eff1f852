"""Uniform affine quantizers: the :class:`QuantSpec` description and the :class:`UniformQuantizer`
module (grids, zero points and scale clamping as in docs/quant.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from .protocol import IntegerGrid, QuantizerNotReady

__all__ = ["SCALE_EPS", "MIN_BITS", "MAX_BITS", "QuantSpec", "UniformQuantizer", "check_bits"]

SCALE_EPS = 1e-8
MIN_BITS = 2
MAX_BITS = 8


def check_bits(bits, name: str = "bits") -> int:
    """Return ``bits`` if it is an int in ``[MIN_BITS, MAX_BITS]``, else raise naming ``name``."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"{name} must be an int in {MIN_BITS}..{MAX_BITS}, got {bits!r} ({type(bits).__name__})")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{name} must be in {MIN_BITS}..{MAX_BITS}, got {bits}")
    return bits


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize to: bit-width, grid and granularity.

    Args:
        bits: 2..8.
        symmetric: symmetric range around 0 (zero point fixed) or asymmetric (integer zero point
            fitted to the range).
        signed: integer grid ``[-2^(b-1), 2^(b-1)-1]`` (True) or ``[0, 2^b-1]`` (False).
            ``None`` (default) means ``signed = symmetric``.
        per_channel: one (scale, zero_point) per slice along ``axis`` instead of one per tensor.
        axis: channel axis for ``per_channel`` (negative counts from the end; checked against
            the tensor's rank when the quantizer meets a tensor). Ignored when per-tensor.
    """

    bits: int = 8
    symmetric: bool = False
    signed: Optional[bool] = None
    per_channel: bool = False
    axis: int = 0

    def __post_init__(self) -> None:
        check_bits(self.bits, "bits")
        for name in ("symmetric", "per_channel"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.signed is None:
            object.__setattr__(self, "signed", self.symmetric)
        elif not isinstance(self.signed, bool):
            raise TypeError(f"signed must be a bool or None, got {self.signed!r}")
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise TypeError(f"axis must be an int, got {self.axis!r}")

    @property
    def quant_min(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def quant_max(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    def resolve_axis(self, ndim: int) -> Optional[int]:
        """The non-negative channel axis for a tensor of rank ``ndim``, or None when per-tensor.

        Raises ValueError naming ``axis`` when it is out of range for that rank.
        """
        if not self.per_channel:
            return None
        if not -ndim <= self.axis < ndim:
            raise ValueError(f"axis={self.axis} is out of range for a tensor with {ndim} dimensions "
                             f"(expected {-ndim} <= axis < {ndim})")
        return self.axis % ndim

    def short(self) -> str:
        """Compact text for reports, e.g. ``'4b asym unsigned per-channel(axis 0)'``."""
        gran = f"per-channel(axis {self.axis})" if self.per_channel else "per-tensor"
        return (f"{self.bits}b {'sym' if self.symmetric else 'asym'} "
                f"{'signed' if self.signed else 'unsigned'} {gran}")


def _ops():
    # Imported lazily: the op layer selects backends on first use, and importing
    # zsq_engine.quant must stay cheap.
    from zsq_engine import ops
    return ops


class SpecRange:
    """``bits`` / ``quant_min`` / ``quant_max`` of a quantizer module, read from its ``self.spec``
    (a :class:`QuantSpec`), so every quantizer class answers them the same way."""

    spec: QuantSpec

    @property
    def bits(self) -> int:
        return self.spec.bits

    @property
    def quant_min(self) -> int:
        return self.spec.quant_min

    @property
    def quant_max(self) -> int:
        return self.spec.quant_max


class UniformQuantizer(SpecRange, nn.Module):
    """Fake-quantizer module: ``forward(x) = x_hat`` with the grid of ``spec``.

    State:
        scale: float32 ``[C]`` (per-channel, ``C = x.shape[axis]``) or ``[1]`` (per-tensor).
            A buffer, or an ``nn.Parameter`` when learnable.
        zero_point: float32 tensor shaped like ``scale`` holding integers. A buffer, or an
            ``nn.Parameter`` when learnable AND asymmetric (LSQ+); a symmetric quantizer's zero
            point is fixed and stays a buffer.
        calibrated: Python bool; True once :meth:`set_qparams` ran or a state dict holding
            ``scale`` was loaded.
        enabled: when False, ``forward`` returns its input unchanged.
        observer: when set (by calibration code), ``forward`` feeds the observer and returns its
            input unchanged; see :mod:`zsq_engine.quant.calibration`.
        calibration_method: name of the observer that activation calibration should use
            ('minmax', 'percentile', 'mse'); set by :func:`zsq_engine.quant.quantize_model`.

    Gradients: a fixed quantizer uses ``ops.fake_quant`` (straight-through, masked to the
    unclamped range); a learnable one uses ``ops.lsq_fake_quant`` (LSQ/LSQ+ gradients for
    scale and zero point). ``grad_factor=None`` gives PyTorch's LSQ default
    ``1 / sqrt(x.numel() * quant_max)``; pass 1.0 for no gradient scaling (Genie).

    Args:
        spec: the grid.
        learnable: make scale (and the asymmetric zero point) ``nn.Parameter``s.
        num_channels: per-channel size, if known now (weights); otherwise the first
            :meth:`set_qparams` decides it.
        grad_factor: LSQ gradient scale (learnable only), see above.
    """

    def __init__(self, spec: QuantSpec, *, learnable: bool = False, num_channels: Optional[int] = None,
                 grad_factor: Optional[float] = None) -> None:
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        if num_channels is not None and (isinstance(num_channels, bool) or not isinstance(num_channels, int)
                                         or num_channels < 1):
            raise ValueError(f"num_channels must be a positive int or None, got {num_channels!r}")
        self.spec = spec
        n = (num_channels or 0) if spec.per_channel else 1
        self.register_buffer("scale", torch.ones(n))
        self.register_buffer("zero_point", torch.zeros(n))
        self.learnable = False
        self.grad_factor = grad_factor
        self.calibrated = False
        self.enabled = True
        self.observer = None
        self.calibration_method: Optional[str] = None
        if learnable:
            self.set_learnable(True)

    # ----------------------------------------------------------------------- properties
    # ----------------------------------------------------------------------- state
    def set_learnable(self, learnable: bool = True) -> "UniformQuantizer":
        """Turn scale (and, if asymmetric, zero_point) into ``nn.Parameter``s or back into buffers.

        Values are kept. Returns self. Build the optimizer after calling this.
        """
        learnable = bool(learnable)
        names = ("scale",) if self.spec.symmetric else ("scale", "zero_point")
        for name in names:
            value = getattr(self, name).detach().clone()
            if name in self._parameters:
                del self._parameters[name]
            if name in self._buffers:
                del self._buffers[name]
            if learnable:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)
        self.learnable = learnable
        return self

    @torch.no_grad()
    def set_qparams(self, scale: torch.Tensor, zero_point: Optional[torch.Tensor] = None) -> "UniformQuantizer":
        """Install calibrated parameters and mark the quantizer calibrated.

        Args:
            scale: ``[C]`` per-channel or one element per-tensor; clamped below by SCALE_EPS.
            zero_point: same shape; rounded (half-even) and clamped to the grid. ``None`` means
                the symmetric zero point of the spec (only valid for symmetric specs).
        Returns self. Values are copied into the existing buffers/parameters (they keep their
        identity, so an optimizer holding them stays valid) unless the shape changes.
        """
        if not isinstance(scale, torch.Tensor):
            raise TypeError(f"scale must be a torch.Tensor, got {type(scale).__name__}")
        scale = scale.detach().reshape(-1).to(torch.float32)
        if self.spec.per_channel:
            if scale.numel() < 1:
                raise ValueError("scale must have at least one element")
        elif scale.numel() != 1:
            raise ValueError(f"scale must have one element for a per-tensor quantizer, got shape {tuple(scale.shape)}")
        if zero_point is None:
            if not self.spec.symmetric:
                raise ValueError("zero_point is required for an asymmetric quantizer")
            zp_value = 0 if self.spec.signed else (self.quant_min + self.quant_max + 1) // 2
            zero_point = torch.full_like(scale, float(zp_value))
        if not isinstance(zero_point, torch.Tensor):
            raise TypeError(f"zero_point must be a torch.Tensor or None, got {type(zero_point).__name__}")
        zero_point = zero_point.detach().reshape(-1).to(device=scale.device, dtype=torch.float32)
        if zero_point.shape != scale.shape:
            raise ValueError(f"zero_point must have the shape of scale {tuple(scale.shape)}, "
                             f"got {tuple(zero_point.shape)}")
        scale = scale.clamp_min(SCALE_EPS)
        zero_point = torch.round(zero_point).clamp(self.quant_min, self.quant_max)
        self._assign("scale", scale)
        self._assign("zero_point", zero_point)
        self.calibrated = True
        return self

    def _assign(self, name: str, value: torch.Tensor) -> None:
        current = getattr(self, name)
        if current.shape == value.shape:
            current.copy_(value.to(current.device))
        else:
            # Shape change (first per-channel calibration): replace the storage but keep the
            # Parameter / buffer nature. The device follows the existing tensor.
            current.data = value.to(current.device).clone()

    def integer_zero_point(self) -> torch.Tensor:
        """The zero point as used in the forward: rounded, clamped to the grid, int32."""
        return torch.round(self.zero_point.detach()).clamp(self.quant_min, self.quant_max).to(torch.int32)

    def qparams(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(scale fp32, zero_point int32)`` detached, as the integer runtime needs them."""
        self._check_calibrated()
        return self.scale.detach().clamp_min(SCALE_EPS), self.integer_zero_point()

    # ----------------------------------------------------------------------- quantizer protocol
    def integer_grid(self, ndim: Optional[int] = None) -> IntegerGrid:
        """The :class:`~zsq_engine.quant.protocol.IntegerGrid` of the calibrated quantizer."""
        if self.observer is not None:
            raise QuantizerNotReady("is still calibrating (an observer is attached)")
        if not self.calibrated:
            raise QuantizerNotReady("is not calibrated", "calibrate the model first "
                                    "(zsq_engine.quant.calibrate_activations / calibrate_weight)")
        axis = self.spec.resolve_axis(ndim) if ndim is not None else (self.spec.axis if self.spec.per_channel
                                                                      else None)
        scale, zp = self.qparams()
        return IntegerGrid(scale.float().reshape(-1), zp.float().reshape(-1), self.quant_min, self.quant_max,
                           self.spec.per_channel, axis)

    @torch.no_grad()
    def integer_codes(self, weight: torch.Tensor) -> torch.Tensor:
        """int32 codes of ``weight``, recovered from this quantizer's own fake-quantized output
        (``w_hat = (q - z) * s`` in fp32, so ``round(w_hat / s) + z`` is exactly ``q``) and checked
        to reproduce it."""
        grid = self.integer_grid(weight.dim())
        w_hat = self(weight.detach()).float()
        view = [1] * w_hat.dim()
        if grid.axis is not None:
            view[grid.axis] = -1
        scale, zp = grid.scale.reshape(view), grid.zero_point.reshape(view)
        codes = (torch.round(w_hat / scale) + zp).clamp(grid.qmin, grid.qmax)
        back = (codes - zp) * scale
        if not torch.equal(back, w_hat):
            raise ValueError(f"the integer weight codes do not reproduce the fake-quantized weight "
                             f"(max error {float((back - w_hat).abs().max()):.3g})")
        return codes.to(torch.int32)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Per-channel quantizers created without num_channels hold empty tensors: adopt the shape
        # of the incoming calibrated parameters, and count a loaded scale as calibrated.
        for name in ("scale", "zero_point"):
            incoming = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(incoming, torch.Tensor) and incoming.shape != current.shape:
                current.data = current.data.new_empty(incoming.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if prefix + "scale" in state_dict:
            self.calibrated = True

    # ----------------------------------------------------------------------- forward
    def _check_calibrated(self) -> None:
        if not self.calibrated:
            raise RuntimeError("UniformQuantizer used before calibration: call set_qparams() or calibrate it "
                               "(zsq_engine.quant.calibrate_weight / calibrate_activations) first, "
                               "or disable it with .enabled = False")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.observer is not None:
            self.observer.update(x.detach())
            return x
        self._check_calibrated()
        axis = self.spec.resolve_axis(x.dim())
        if axis is not None and self.scale.numel() != x.shape[axis]:
            raise ValueError(f"quantizer has {self.scale.numel()} channels but x.shape[{axis}] = {x.shape[axis]}")
        ops = _ops()
        if self.learnable:
            grad_factor = self.grad_factor
            if grad_factor is None:
                grad_factor = 1.0 / math.sqrt(x.numel() * self.quant_max)
            return ops.lsq_fake_quant(x, self.scale.clamp_min(SCALE_EPS), self.zero_point, self.quant_min,
                                      self.quant_max, axis=axis, grad_factor=grad_factor)
        return ops.fake_quant(x, self.scale, self.zero_point, self.quant_min, self.quant_max, axis=axis)

    def extra_repr(self) -> str:
        s = self.spec
        text = (f"bits={s.bits}, symmetric={s.symmetric}, signed={s.signed}, "
                f"range=[{s.quant_min}, {s.quant_max}], per_channel={s.per_channel}")
        if s.per_channel:
            text += f", axis={s.axis}"
        text += f", learnable={self.learnable}, calibrated={self.calibrated}"
        if not self.enabled:
            text += ", enabled=False"
        return text
