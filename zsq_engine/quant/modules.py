"""Fake-quantized layers: :class:`QuantConv2d` and :class:`QuantLinear`.

A wrapper takes a float ``nn.Conv2d`` / ``nn.Linear`` and computes::

    y = conv2d / linear(act_quantizer(x), weight_quantizer(weight), bias)

``weight`` and ``bias`` are the SAME ``nn.Parameter`` objects as the wrapped layer's (no copy):
training the wrapper trains them, and state-dict keys (``<layer>.weight``, ``<layer>.bias``)
stay those of the float model, plus ``weight_quantizer.*`` / ``act_quantizer.*``. Copy the
model first (``quantize_model`` does, unless ``inplace=True``) to keep the float one intact.

Either quantizer may be absent (spec ``None``: that operand stays float, e.g. the input of the
first layer) and each present one has an ``enabled`` switch (see ``set_quant_state``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.conv_forms import conv2d_narrow_aware
from .calibration import calibrate_weight
from .quantizer import QuantSpec, UniformQuantizer

__all__ = ["QuantLayer", "QuantConv2d", "QuantLinear", "default_weight_spec", "default_act_spec"]


def default_weight_spec(bits: int = 8) -> QuantSpec:
    """Per-output-channel (axis 0) asymmetric unsigned weights, as BRECQ."""
    return QuantSpec(bits=bits, symmetric=False, per_channel=True, axis=0)


def default_act_spec(bits: int = 8) -> QuantSpec:
    """Per-tensor asymmetric unsigned activations."""
    return QuantSpec(bits=bits, symmetric=False, per_channel=False)


class QuantLayer(nn.Module):
    """Common part of the Quant* wrappers: the two quantizers and their bookkeeping.

    Attributes:
        weight, bias: the wrapped layer's Parameters (shared, not copied).
        weight_quantizer: :class:`UniformQuantizer` or None (float weights).
        act_quantizer: :class:`UniformQuantizer` for the input, or None (float input).
    """

    weight: nn.Parameter

    def _init_quant(self, layer: nn.Module, weight_spec: Optional[QuantSpec], act_spec: Optional[QuantSpec],
                    learnable: bool) -> None:
        self.weight = layer.weight
        if layer.bias is None:
            self.register_parameter("bias", None)  # an empty slot, as in nn.Conv2d(bias=False)
        else:
            self.bias = layer.bias
        if weight_spec is not None:
            if not isinstance(weight_spec, QuantSpec):
                raise TypeError(f"weight_spec must be a QuantSpec or None, got {type(weight_spec).__name__}")
            axis = weight_spec.resolve_axis(self.weight.dim())
            channels = self.weight.shape[axis] if axis is not None else None
            self.weight_quantizer = UniformQuantizer(weight_spec, learnable=learnable, num_channels=channels)
            self.weight_quantizer.to(self.weight.device)
        else:
            self.weight_quantizer = None
        if act_spec is not None:
            if not isinstance(act_spec, QuantSpec):
                raise TypeError(f"act_spec must be a QuantSpec or None, got {type(act_spec).__name__}")
            self.act_quantizer = UniformQuantizer(act_spec, learnable=learnable)
            self.act_quantizer.to(self.weight.device)
        else:
            self.act_quantizer = None

    @property
    def weight_bits(self) -> Optional[int]:
        """Weight bit-width, or None when the weights stay float."""
        return self.weight_quantizer.bits if self.weight_quantizer is not None else None

    @property
    def act_bits(self) -> Optional[int]:
        """Input-activation bit-width, or None when the input stays float."""
        return self.act_quantizer.bits if self.act_quantizer is not None else None

    def calibrate_weight(self, method: str = "mse", **kwargs) -> "QuantLayer":
        """Calibrate the weight quantizer from the current weights ('mse' or 'minmax'). Returns self."""
        if self.weight_quantizer is not None:
            calibrate_weight(self.weight_quantizer, self.weight, method, **kwargs)
        return self

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight (detached); the float weight if there is no weight quantizer."""
        with torch.no_grad():
            if self.weight_quantizer is None or not self.weight_quantizer.enabled:
                return self.weight.detach().clone()
            return self.weight_quantizer(self.weight).detach()

    def _inputs(self, x: torch.Tensor):
        if self.act_quantizer is not None:
            x = self.act_quantizer(x)
        w = self.weight_quantizer(self.weight) if self.weight_quantizer is not None else self.weight
        return x, w

    def _bits_repr(self) -> str:
        w = self.weight_bits if self.weight_bits is not None else "float"
        a = self.act_bits if self.act_bits is not None else "float"
        return f"w_bits={w}, a_bits={a}"


class QuantConv2d(QuantLayer):
    """Fake-quantized ``nn.Conv2d``: ``conv2d(act_q(x), w_q(weight), bias, ...)``.

    Args:
        conv: the float conv (any ``nn.Conv2d``); its Parameters are shared.
        weight_spec: default per-output-channel 8-bit asymmetric (axis 0); None = float weights.
        act_spec: default per-tensor 8-bit asymmetric; None = float input.
        learnable: make the quantizers' scales (and asymmetric zero points) Parameters.
    Input ``[N, C_in, H, W]`` -> output ``[N, C_out, H', W']``, as the wrapped conv.
    The weight quantizer is NOT calibrated here: call :meth:`calibrate_weight`.
    """

    def __init__(self, conv: nn.Conv2d, weight_spec: Optional[QuantSpec] = default_weight_spec(),
                 act_spec: Optional[QuantSpec] = default_act_spec(), *, learnable: bool = False) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode"):
            setattr(self, name, getattr(conv, name))
        # Non-'zeros' padding modes pad explicitly, as nn.Conv2d does internally.
        self._pad = conv._reversed_padding_repeated_twice if conv.padding_mode != "zeros" else None
        self._init_quant(conv, weight_spec, act_spec, learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._inputs(x)
        if self._pad is not None:
            x = F.pad(x, self._pad, mode=self.padding_mode)
            return F.conv2d(x, w, self.bias, self.stride, 0, self.dilation, self.groups)
        # a 1-channel 3x3 stem or a few-output 3x3 layer on CPU takes the GEMM form (beats oneDNN)
        return conv2d_narrow_aware(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def to_float(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding copies of the current float weight and bias."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, groups=self.groups,
                         bias=self.bias is not None, padding_mode=self.padding_mode,
                         device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        text += f", bias={self.bias is not None}, {self._bits_repr()}"
        return text


class QuantLinear(QuantLayer):
    """Fake-quantized ``nn.Linear``: ``linear(act_q(x), w_q(weight), bias)``.

    Args as :class:`QuantConv2d` (weight per-output-feature, axis 0, by default).
    Input ``[..., in_features]`` -> output ``[..., out_features]``.
    """

    def __init__(self, linear: nn.Linear, weight_spec: Optional[QuantSpec] = default_weight_spec(),
                 act_spec: Optional[QuantSpec] = default_act_spec(), *, learnable: bool = False) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self._init_quant(linear, weight_spec, act_spec, learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._inputs(x)
        return F.linear(x, w, self.bias)

    def to_float(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding copies of the current float weight and bias."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._bits_repr()}")
