"""bit_allocation.output_kl: the label-free score that picks among reconstructed candidate plans."""
import math

import pytest
import torch
from torch import nn

from zsq_engine.quant.bit_allocation import output_kl


class Fixed(nn.Module):
    """Returns the same logits row for every input: the KL is then known in closed form."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float64))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_output_kl_by_hand():
    # p = softmax(0, 0) = (1/2, 1/2); q = softmax(log 3, 0) = (3/4, 1/4)
    # KL(p || q) = 1/2 log((1/2)/(3/4)) + 1/2 log((1/2)/(1/4)) = 1/2 log(4/3)
    kl = output_kl(Fixed([math.log(3.0), 0.0]), Fixed([0.0, 0.0]), torch.zeros(5, 1))
    assert kl == pytest.approx(0.5 * math.log(4.0 / 3.0), rel=1e-12)


def test_output_kl_weights_batches_by_size_and_restores_modes():
    torch.manual_seed(0)
    model, other = nn.Linear(3, 4), nn.Linear(3, 4)
    other.train()
    x = torch.randn(7, 3)
    whole = output_kl(other, model, x, batch_size=7)
    split = output_kl(other, model, x, batch_size=3)   # batches of 3, 3, 1
    assert split == pytest.approx(whole, rel=1e-12)
    assert output_kl(model, model, x) == pytest.approx(0.0, abs=1e-12)
    assert other.training and model.training


def test_output_kl_rejects_empty_images():
    with pytest.raises(ValueError, match="images"):
        output_kl(nn.Linear(3, 4), nn.Linear(3, 4), torch.zeros(0, 3))
