"""A tiny BatchNorm ResNet for 1x28x28 Fashion-MNIST: the engine's default demo model.

Layout (about 9.3 M multiply-accumulates and 78 k parameters per 28x28 image)::

    conv1 3x3 1->16, bn1, relu                      28x28
    layer1: BasicBlock 16 -> 16                     28x28
    layer2: BasicBlock 16 -> 32, stride 2 (+1x1 shortcut)   14x14
    layer3: BasicBlock 32 -> 64, stride 2 (+1x1 shortcut)    7x7
    avgpool, flatten, fc 64 -> 10

It reuses :class:`zsq_engine.models.resnet.BasicBlock` and the torchvision naming
(conv1/bn1/relu/layerN/fc), so tools written for ResNet-18 work on it unchanged. It is kept
this small because the demo runs data synthesis and block reconstruction on a 2-core CPU.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .resnet import BasicBlock, init_resnet_weights, make_stage

__all__ = ["FmnistResNet", "fmnist_resnet", "count_macs"]


class FmnistResNet(nn.Module):
    """Small CIFAR-style ResNet for ``[N, in_channels, 28, 28]`` input -> ``[N, num_classes]`` logits.

    Args:
        num_classes: classifier outputs.
        in_channels: input channels (1 for Fashion-MNIST).
        widths: channels of the stages; stage i > 0 halves the resolution.
        blocks: BasicBlocks per stage.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64),
        blocks: Sequence[int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths {list(widths)} and blocks {list(blocks)} must be non-empty and equally long")
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        inplanes = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", make_stage(BasicBlock, inplanes, width, n, stride))
            inplanes = width
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(inplanes, num_classes)
        init_resnet_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.flatten(self.avgpool(x)))


def fmnist_resnet(num_classes: int = 10, **kwargs) -> FmnistResNet:
    """The default demo model (architecture of the committed ``weights/fmnist_resnet.pt``)."""
    return FmnistResNet(num_classes=num_classes, **kwargs)


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for ONE input of shape ``(C, H, W)``.

    Measured with forward hooks on a zero tensor, so it is exact for any layout of those layers
    (element-wise ops, BN, pooling are not counted).
    """
    total = 0

    def conv_hook(mod: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        total += out[0].numel() * k

    def linear_hook(mod: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * mod.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total
