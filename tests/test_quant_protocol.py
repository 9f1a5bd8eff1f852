"""The quantizer protocol (zsq_engine.quant.protocol): every quantizer family states its integer
grid the same way, and the runtime reads quantizers only through it."""
import pytest
import torch
from torch import nn

from zsq_engine.quant import GridQuantizer, QuantSpec, UniformQuantizer, WeightGridQuantizer, naive_ptq
from zsq_engine.recon import AdaRoundWeightQuantizer, LSQActQuantizer
from zsq_engine.runtime.qparams import act_qparams, integer_weight


def _layer():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    q = naive_ptq(model, [torch.randn(4, 3, 6, 6)], 4, 4, progress=False).eval()
    return q[2]


def test_uniform_codes_hand_computed():
    wq = UniformQuantizer(QuantSpec(bits=4, symmetric=True, per_channel=True, axis=0))
    wq.set_qparams(torch.tensor([0.1, 0.5]))
    w = torch.tensor([[0.14, -0.26, 0.05], [1.2, -4.0, 0.3]])
    # round-half-even of w / s, clamped to [-8, 7]: 0.5 -> 0, 2.4 -> 2, -8 -> -8, 0.6 -> 1
    assert torch.equal(wq.integer_codes(w), torch.tensor([[1, -3, 0], [2, -8, 1]], dtype=torch.int32))
    grid = wq.integer_grid(2)
    assert (grid.qmin, grid.qmax, grid.axis, grid.per_channel, grid.bits, grid.signed) == (-8, 7, 0, True, 4, True)
    assert torch.equal(grid.zero_point, torch.zeros(2))


def test_every_quantizer_family_implements_the_protocol():
    layer = _layer()
    ada = AdaRoundWeightQuantizer(layer.weight, layer.weight_quantizer)
    lsq = LSQActQuantizer(layer.act_quantizer)
    for q in (layer.weight_quantizer, ada):
        assert isinstance(q, WeightGridQuantizer)
    for q in (layer.act_quantizer, lsq):
        assert isinstance(q, GridQuantizer)
    assert not isinstance(nn.ReLU(), GridQuantizer)
    # AdaRound starts from the template's grid: the same (s, z)
    a, b = ada.integer_grid(4), layer.weight_quantizer.integer_grid(4)
    assert torch.equal(a.scale, b.scale) and torch.equal(a.zero_point, b.zero_point)
    assert torch.equal(ada.integer_codes(layer.weight), ada.integer_weight())
    lsq.dropping = True
    with pytest.raises(ValueError, match="QDrop mode"):
        act_qparams(lsq, "layer 2")


class _GridOnly(nn.Module):
    """A quantizer of no class the runtime knows: a bare module with only the protocol's members,
    answering from another quantizer."""

    def __init__(self, source) -> None:
        super().__init__()
        self.source, self.enabled = source, True

    def integer_grid(self, ndim=None):
        return self.source.integer_grid(ndim)

    def integer_codes(self, weight):
        return self.source.integer_codes(weight)


def test_runtime_reads_any_quantizer_through_the_protocol():
    layer = _layer()
    want_w = integer_weight(layer, "layer 2")
    want_a = act_qparams(layer.act_quantizer, "layer 2")
    wq, aq = layer.weight_quantizer, layer.act_quantizer
    layer.weight_quantizer, layer.act_quantizer = _GridOnly(wq), _GridOnly(aq)
    got_w = integer_weight(layer, "layer 2")
    assert all(torch.equal(g, w) if isinstance(g, torch.Tensor) else g == w for g, w in zip(got_w, want_w))
    assert act_qparams(layer.act_quantizer, "layer 2") == want_a
    layer.act_quantizer = nn.Identity()
    with pytest.raises(ValueError, match=r"layer 2: activation quantizer of type Identity is not supported"):
        act_qparams(layer.act_quantizer, "layer 2")


def test_uncalibrated_and_observing_quantizers_are_named():
    layer = _layer()
    fresh = UniformQuantizer(QuantSpec(bits=8))
    with pytest.raises(ValueError, match="layer 2: its activation quantizer is not calibrated; calibrate"):
        act_qparams(fresh, "layer 2")
    layer.weight_quantizer = UniformQuantizer(QuantSpec(bits=4, symmetric=True))
    with pytest.raises(ValueError, match="layer 2: its weight quantizer is not calibrated"):
        integer_weight(layer, "layer 2")
