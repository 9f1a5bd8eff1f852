"""zsq_engine.utils: the model fingerprint against an independent hash, and its use by `zsq quantize`
to refuse synthetic data made from other weights."""
import hashlib

import pytest
import torch
from torch import nn

from zsq_engine.commands import guard
from zsq_engine.commands.quantize import load_calibration_data
from zsq_engine.models import get_model
from zsq_engine.utils import model_fingerprint


def test_model_fingerprint_is_the_state_dict_hash():
    m = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    h = hashlib.sha256()
    for name, t in m.state_dict().items():
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    assert model_fingerprint(m) == h.hexdigest()[:16]
    with torch.no_grad():
        m[0].bias[1] += 1e-6
    assert model_fingerprint(m) != h.hexdigest()[:16]


def test_quantize_refuses_synthetic_data_of_other_weights():
    torch.manual_seed(0)
    model, other = get_model("fmnist_resnet"), get_model("fmnist_resnet")  # two random inits
    images = torch.randn(5, 1, 28, 28)

    def load(m, meta):
        return load_calibration_data("syn.pt", "fmnist_resnet", m, 4, None, 0,
                                     preloaded={"images": images, "labels": None, "meta": meta})

    # a model object synthesized from Python is recorded by class name: identical weights suffice
    by_class = {"model": "FmnistResNet", "model_fingerprint": model_fingerprint(model)}
    assert torch.equal(load(model, by_class), images[:4])
    with pytest.raises(guard.CommandError, match="synthesized for model 'FmnistResNet'"):
        load(other, by_class)
    by_name = {"model": "fmnist_resnet", "model_fingerprint": model_fingerprint(model)}
    assert torch.equal(load(model, by_name), images[:4])
    with pytest.raises(guard.CommandError, match="synthesized from different fmnist_resnet weights"):
        load(other, by_name)
