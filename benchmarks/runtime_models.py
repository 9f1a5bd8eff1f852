"""The float networks the CPU runtime benchmark times, and what their weights are.

Real weights where the machine has them (the committed Fashion-MNIST ResNet, EfficientNet-Lite0
from its weights package); otherwise random weights with every BatchNorm's statistics measured on
the calibration images. A freshly initialised network keeps BN statistics (0, 1) that do not fit
its activations: through MobileNetV2's 17 blocks the logits shrink to ~1e-9 and every prediction
is a tie, so no contender could be checked against another."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

PRETRAINED_IF_AVAILABLE = ("fmnist_resnet", "efficientnet_lite0")


@torch.no_grad()
def measure_bn_statistics(model: nn.Module, images: Sequence[torch.Tensor]) -> nn.Module:
    """Replace every BatchNorm's running mean / variance by the exact statistics of ``images``
    (cumulative average over the batches, not a momentum blend); the model is left in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for x in images:
        model(x)
    return model.eval()


def benchmark_model(name: str, calib: Sequence[torch.Tensor]) -> Tuple[nn.Module, str]:
    """``(float model in eval mode, weights description)`` for one benchmark network."""
    from zsq_engine.models import get_model

    if name in PRETRAINED_IF_AVAILABLE:
        try:
            return get_model(name, pretrained=True).eval(), "pretrained"
        except ImportError:  # EfficientNet-Lite0's optional weights package is not installed
            pass
    model = get_model(name, pretrained=False)
    return measure_bn_statistics(model, calib), "random, BN statistics of the calibration images"
