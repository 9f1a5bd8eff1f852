"""ResNet-18 / ResNet-50 with torchvision-compatible state-dict keys.

The module tree mirrors torchvision's ``resnet18`` / ``resnet50`` (v1.5: the stride of a
Bottleneck sits on its 3x3 conv), so a torchvision checkpoint loads with ``strict=True``
without torchvision being installed.

Two deliberate differences from torchvision, neither of which touches the state dict:

* every activation site has its own ``nn.ReLU`` module (``relu`` after bn1, ``relu2`` after
  bn2 in a Bottleneck, ``relu_out`` after the residual add), so quantization wrappers and
  forward hooks can address each site separately;
* no in-place ops (``inplace=False`` ReLUs, out-of-place residual add), so a hook that keeps a
  BatchNorm output (BN-statistic losses, block reconstruction) never sees it overwritten.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Type, Union

import torch
from torch import nn

from .roles import residual_block

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BatchNorm always follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (a BatchNorm always follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def make_downsample(in_planes: int, out_planes: int, stride: int) -> Optional[nn.Sequential]:
    """Shortcut projection ``Sequential(conv1x1, BN)`` (keys ``downsample.0`` / ``downsample.1``),
    or None when the identity shortcut already has the right shape."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


@residual_block
class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: ``relu_out(bn2(conv2(relu(bn1(conv1(x))))) + sc(x))``.

    Input ``[N, inplanes, H, W]`` -> output ``[N, planes, H/stride, W/stride]``.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu_out = nn.ReLU()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + identity)


@residual_block
class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4), plus a shortcut.

    Input ``[N, inplanes, H, W]`` -> output ``[N, 4 * planes, H/stride, W/stride]``.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample
        self.relu_out = nn.ReLU()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu_out(out + identity)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


def make_stage(block: Block, inplanes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
    """``num_blocks`` blocks; the first one carries the stride and the shortcut projection."""
    layers: List[nn.Module] = []
    downsample = make_downsample(inplanes, planes * block.expansion, stride)
    layers.append(block(inplanes, planes, stride, downsample))
    for _ in range(1, num_blocks):
        layers.append(block(planes * block.expansion, planes))
    return nn.Sequential(*layers)


def init_resnet_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """torchvision's initialisation: Kaiming-normal (fan_out) convs, BN gamma=1 / beta=0,
    optionally gamma=0 on the last BN of every residual branch."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages, global average pool, fc.

    Input ``[N, 3, H, W]`` float (224x224 for the ImageNet checkpoints) -> logits
    ``[N, num_classes]``.
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must have 4 entries (blocks per stage), got {list(layers)}")
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        inplanes = 64
        for i, (width, n) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", make_stage(block, inplanes, width, n, stride))
            inplanes = width * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(inplanes, num_classes)
        init_resnet_weights(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-18 (11,689,512 parameters at 1000 classes)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, **kwargs)


def resnet50(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-50 v1.5 (25,557,032 parameters at 1000 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, **kwargs)
