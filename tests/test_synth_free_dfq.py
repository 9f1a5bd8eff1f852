"""DFQ (zsq_engine.synth_free): equalisation, high-bias absorption, analytic bias correction."""
import copy
import math

import pytest
import torch
from torch import nn

from _support.runtime import healthy
from zsq_engine.models import get_model
from zsq_engine.models.efficientnet_lite import BlockArgs, EfficientNetLite
from zsq_engine.models.mobilenetv2 import MobileNetV2
from zsq_engine.quant import calibrate_activations, quantize_model
from zsq_engine.synth_free import (ChannelClamp, bias_correct, clipped_normal_moments, cross_layer_equalize, dfq,
                                   find_equalization_pairs)
from zsq_engine.synth_free.equalize import first_ranges, second_ranges


class Chain(nn.Module):
    """conv1 -> [bn] -> act -> conv2, 1x1 convs (no padding: absorption is exact)."""

    def __init__(self, w1, w2, bn=None, act=None):
        super().__init__()
        self.conv1 = nn.Conv2d(w1.shape[1], w1.shape[0], 1, bias=bn is None)
        self.bn = bn if bn is not None else nn.Identity()
        self.act = act if act is not None else nn.ReLU()
        self.conv2 = nn.Conv2d(w2.shape[1], w2.shape[0], 1, bias=False)
        with torch.no_grad():
            self.conv1.weight.copy_(w1.reshape(*w1.shape, 1, 1))
            if self.conv1.bias is not None:
                self.conv1.bias.zero_()
            self.conv2.weight.copy_(w2.reshape(*w2.shape, 1, 1))

    def forward(self, x):
        return self.conv2(self.act(self.bn(self.conv1(x))))


def test_equalization_scales_of_a_two_layer_chain_by_hand():
    # r1 = (4, 0.25), r2 = (1, 4): s = sqrt(r1 r2) / r2 = (2, 0.25); both ranges become (2, 1)
    w1 = torch.tensor([[4.0, -1.0], [0.25, 0.125]])
    w2 = torch.tensor([[1.0, 4.0], [-0.5, 2.0]])
    m = Chain(w1, w2).eval()
    eq, pairs = cross_layer_equalize(m)
    assert [(p.first, p.second) for p in pairs] == [("conv1", "conv2")]
    torch.testing.assert_close(eq.conv1.weight.flatten(1), torch.tensor([[2.0, -0.5], [1.0, 0.5]]))
    torch.testing.assert_close(eq.conv2.weight.flatten(1), torch.tensor([[2.0, 1.0], [-1.0, 0.5]]))
    torch.testing.assert_close(m.conv1.weight.flatten(1), w1)  # the input model is not modified


def test_equalization_through_bn_scales_the_bn_affine():
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, 1.0]))
        bn.bias.copy_(torch.tensor([1.0, -1.0]))
        bn.running_var.copy_(torch.tensor([4.0 - 1e-5, 1.0 - 1e-5]))   # sqrt(var + eps) = (2, 1)
    m = Chain(torch.tensor([[4.0], [1.0]]), torch.tensor([[1.0, 4.0]]), bn=bn).eval()
    x = torch.randn(5, 1, 3, 3)
    ref = m(x)
    eq, _ = cross_layer_equalize(m)
    # folded r1 = (4 * 2 / 2, 1 * 1 / 1) = (4, 1); r2 = (1, 4): s = (2, 0.5)
    torch.testing.assert_close(eq.bn.weight, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(eq.bn.bias, torch.tensor([0.5, -2.0]))
    torch.testing.assert_close(eq.conv1.weight, m.conv1.weight)      # the conv itself is untouched
    torch.testing.assert_close(eq(x), ref)


def _randomise_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            c = mod.num_features
            # wildly different per-channel scales: what equalisation is for
            mod.weight.data = torch.exp(torch.randn(c, generator=g) * 1.5)
            mod.bias.data = torch.randn(c, generator=g)
            mod.running_mean.data = torch.randn(c, generator=g) * 0.3
            mod.running_var.data = torch.rand(c, generator=g) + 0.5
    return model.eval()


def _small_mobilenet():
    return _randomise_bn(MobileNetV2(num_classes=10, width_mult=0.35,
                                     inverted_residual_setting=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 2))), 1)


def _small_efficientnet():
    blocks = (BlockArgs(1, 3, 1, 1, 32, 16), BlockArgs(2, 5, 2, 6, 16, 24), BlockArgs(1, 3, 2, 6, 24, 40))
    return _randomise_bn(EfficientNetLite(blocks, num_classes=10, head_channels=64), 2)


def _relu6_as_relu(model):
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(mod, cname, nn.ReLU())
    return model


def _assert_same(a, b, x):
    ya, yb = a(x), b(x)
    scale = yb.abs().max().item()
    assert (ya - yb).abs().max().item() <= 1e-5 * max(scale, 1.0), ((ya - yb).abs().max(), scale)


@pytest.mark.slow
@pytest.mark.parametrize("build", [_small_mobilenet, _small_efficientnet], ids=["mobilenetv2", "efficientnet"])
def test_equalization_keeps_depthwise_nets_equivalent(build):
    net = build()
    x = torch.randn(2, 3, 33, 33)
    pairs = find_equalization_pairs(net)
    assert any(net.get_submodule(p.second).groups > 1 for p in pairs)            # depthwise as second
    assert any(net.get_submodule(p.first).groups > 1 for p in pairs)             # depthwise as first
    with torch.no_grad():
        exact, done = cross_layer_equalize(net, relu6="clamp")
        _assert_same(exact, net, x)
        assert sum(isinstance(m, ChannelClamp) for m in exact.modules()) == len(done)
        # the paper's choice: equal to the model whose equalised ReLU6s are ReLUs
        paper, _ = cross_layer_equalize(net, relu6="relu")
        _assert_same(paper, _relu6_as_relu(copy.deepcopy(net)), x)
        # after the sweeps every pair's two ranges agree (the last pair exactly)
        for p in done:
            bn = exact.get_submodule(p.bn)
            r1, r2 = first_ranges(exact.get_submodule(p.first), bn), second_ranges(exact.get_submodule(p.second))
            torch.testing.assert_close(r1, r2, rtol=1e-3, atol=1e-9)
        skipped, kept = cross_layer_equalize(net, relu6="skip")
        assert not kept                                   # every pair of these nets goes through a ReLU6
        # 'auto' equalises exactly the pairs whose BN keeps beta + 3 |gamma| <= 6
        auto, auto_pairs = cross_layer_equalize(net, relu6="auto")
        inactive = [p.first for p in pairs
                    if float((net.get_submodule(p.bn).bias + 3 * net.get_submodule(p.bn).weight.abs()).max()) <= 6]
        assert [p.first for p in auto_pairs] == inactive
        # dfq hands the same pairs back when asked
        _, dfq_pairs = dfq(net, relu6="auto", return_pairs=True)
        assert [p.first for p in dfq_pairs] == inactive


def test_dfq_on_the_fashion_mnist_resnet_is_equivalent():
    model = get_model("fmnist_resnet", pretrained=True).eval()
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        eq, pairs = cross_layer_equalize(model)
        assert len(pairs) == 3                            # conv1 -> conv2 inside each BasicBlock
        _assert_same(eq, model, x)
        full = dfq(model)
        # absorption is exact wherever the 3-sigma assumption holds; on random images nearly so
        y, ref = full(x), model(x)
        assert (y - ref).abs().max() <= 1e-3 * ref.abs().max()


def test_high_bias_absorption_by_hand():
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 0.5]))
        bn.bias.copy_(torch.tensor([5.0, 1.0]))
        bn.running_var.fill_(1.0 - 1e-5)
    # equal ranges everywhere (s = 1) so only absorption acts
    # folded r1 = (1 * 1, 2 * 0.5) = (1, 1) = r2: s = 1
    m = Chain(torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0, -1.0]]), bn=bn).eval()
    out = dfq(m, absorb_bias=True)
    # c = max(0, beta - 3 |gamma|) = (2, 0): beta -> (3, 1), conv2 bias = W2 c = 1 * 2 - 1 * 0 = 2
    torch.testing.assert_close(out.bn.bias, torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(out.conv2.bias, torch.tensor([2.0]))
    # exact wherever channel 0's BN output is >= c = 2: inputs x >= -3 (its pre-activation is x + 5)
    x = torch.rand(4, 1, 3, 3) * 3 - 1
    torch.testing.assert_close(out(x), m(x))


def test_absorption_keeps_a_channel_clamp_consistent():
    bn = nn.BatchNorm2d(1)
    with torch.no_grad():
        bn.weight.fill_(0.5)
        bn.bias.fill_(3.0)
        bn.running_var.fill_(1.0 - 1e-5)
    m = Chain(torch.tensor([[2.0]]), torch.tensor([[1.0]]), bn=bn, act=nn.ReLU6()).eval()   # r1 = r2 = 1
    out = dfq(m, relu6="clamp")
    c = 3.0 - 1.5
    assert isinstance(out.act, ChannelClamp)
    torch.testing.assert_close(out.act.upper, torch.tensor([6.0 - c]))
    x = torch.linspace(-1.5, 6, 40).reshape(1, 1, 5, 8)                 # pre-activation x + 3 >= c
    torch.testing.assert_close(out(x), m(x))


@pytest.mark.parametrize("mean,std,upper", [(0.3, 1.2, None), (-1.0, 0.7, None), (2.5, 2.0, 6.0), (5.5, 1.0, 6.0),
                                            (1.0, 0.5, 1.2)])
def test_clipped_normal_moments_match_monte_carlo(mean, std, upper):
    g = torch.Generator().manual_seed(0)
    n = 2_000_000
    samples = (torch.randn(n, generator=g, dtype=torch.float64) * std + mean).clamp(0, upper)
    m, v = clipped_normal_moments(torch.tensor([mean]), torch.tensor([std]), 0.0, upper)
    sem = samples.std().item() / math.sqrt(n)
    assert abs(m.item() - samples.mean().item()) < 5 * sem + 1e-12
    assert abs(v.item() - samples.var().item()) < 0.01 * samples.var().item() + 1e-9


def test_clipped_normal_closed_form_at_zero_mean():
    m, v = clipped_normal_moments(torch.tensor([0.0]), torch.tensor([2.0]))
    assert m.item() == pytest.approx(2.0 / math.sqrt(2 * math.pi), rel=1e-12)
    assert v.item() == pytest.approx(4.0 * (0.5 - 1 / (2 * math.pi)), rel=1e-12)
    m0, v0 = clipped_normal_moments(torch.tensor([-1.0, 3.0]), torch.tensor([0.0, 0.0]), 0.0, 2.0)
    assert m0.tolist() == [0.0, 2.0] and v0.tolist() == [0.0, 0.0]


class BNChain(nn.Module):
    """conv1(1x1) -> BN -> ReLU -> conv2 (3x3 no padding): conv2's input is BN-modelled."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 5, 3, bias=True)
        with torch.no_grad():
            self.bn.weight.copy_(torch.tensor([1.0, 0.5, 2.0, 0.3, 1.5, 0.8]))
            self.bn.bias.copy_(torch.tensor([0.5, 1.0, -0.5, 2.0, 0.0, 0.7]))

    def forward(self, x):
        return self.conv2(self.relu(self.bn(self.conv1(x))))


@torch.no_grad()
def test_bias_correction_removes_the_expected_output_shift():
    torch.manual_seed(3)
    model = BNChain().eval()
    qmodel = quantize_model(model, 3, 8, first_last_bits=None, weight_method="minmax")
    qmodel.conv1.act_quantizer = None             # look at weight error only
    qmodel.conv2.act_quantizer = None
    # independent oracle: feed conv2 inputs drawn from relu(N(beta, gamma^2)) and average
    g = torch.Generator().manual_seed(1)
    beta, gamma = model.bn.bias.view(1, -1, 1, 1), model.bn.weight.view(1, -1, 1, 1)
    x = torch.relu(torch.randn(4000, 6, 3, 3, generator=g) * gamma + beta)
    w, wq = qmodel.conv2.weight.clone(), qmodel.conv2.quantized_weight()
    drift = (torch.nn.functional.conv2d(x, wq) - torch.nn.functional.conv2d(x, w)).mean((0, 2, 3))
    assert drift.abs().max() > 0.02                 # 3-bit weights: a real bias to remove
    bias_before = qmodel.conv2.bias.clone()
    shifts = bias_correct(qmodel, model)
    assert set(shifts) == {"conv2"}                 # conv1's input is the image: nothing known
    torch.testing.assert_close(shifts["conv2"].float(), drift, atol=0.01, rtol=0.02)
    torch.testing.assert_close(qmodel.conv2.bias, bias_before - shifts["conv2"].float())


def _wild_net():
    """A net with per-channel ranges spread over 4 orders of magnitude, compensated downstream."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    healthy(net, (3, 12, 12))
    spread = torch.logspace(-2, 2, 16)
    with torch.no_grad():
        net[1].weight.mul_(spread)
        net[1].bias.mul_(spread)
        net[3].weight.div_(spread.view(-1, 1, 1, 1))
    return net.eval()


@torch.no_grad()
def test_dfq_improves_per_tensor_ptq_on_wild_ranges():
    net = _wild_net()
    x = torch.randn(64, 3, 12, 12)
    ref = net(x)

    def err(model, fmodel=None):
        q = quantize_model(model, 6, 8, first_last_bits=None, per_channel_weights=False, weight_method="minmax")
        if fmodel is not None:
            bias_correct(q, fmodel)
        calibrate_activations(q, [x], progress=False)
        return ((q(x) - ref) ** 2).mean().item()

    naive = err(net)
    f = dfq(net)
    torch.testing.assert_close(f(x), ref, atol=1e-3 * ref.abs().max().item(), rtol=0)
    with_dfq = err(f, f)
    assert with_dfq < 0.2 * naive, (naive, with_dfq)


def test_relu6_bookkeeping_rebuilds_the_equalised_architecture():
    from zsq_engine.synth_free import relu6_replaced, replace_relu6

    net = _small_mobilenet()
    eq = dfq(net, absorb_bias=False, relu6="relu")
    names = relu6_replaced(net, eq)
    assert names and set(names) == {n for n, m in net.named_modules() if isinstance(m, nn.ReLU6)}
    rebuilt = replace_relu6(copy.deepcopy(net), names)
    with torch.no_grad():
        _assert_same(eq, rebuilt, torch.randn(2, 3, 33, 33))
    with pytest.raises(ValueError, match="ReLU6"):
        replace_relu6(rebuilt, names[:1])


@torch.no_grad()
def test_bn_activation_ranges_by_hand_and_data_free_calibration():
    from zsq_engine.synth_free import bn_activation_ranges, set_bn_activation_ranges

    bn = nn.BatchNorm2d(2)
    bn.weight.copy_(torch.tensor([1.0, 0.5]))
    bn.bias.copy_(torch.tensor([10.0, 1.0]))
    m = Chain(torch.tensor([[1.0], [1.0]]), torch.tensor([[1.0, 1.0]]), bn=bn, act=nn.ReLU6()).eval()
    # channel 0 ~ N(10, 1) clipped to [0, 6]: mean ~6, tiny std, support cap 6;
    # channel 1 ~ N(1, 0.25) barely clipped: 1 - 6 * 0.5 < 0 -> low 0
    lo, hi = bn_activation_ranges(m)["conv2"]
    assert lo == 0.0 and hi == pytest.approx(6.0)
    m2 = Chain(torch.tensor([[1.0], [1.0]]), torch.tensor([[1.0, 1.0]]), bn=bn, act=nn.ReLU()).eval()
    lo, hi = bn_activation_ranges(m2, num_std=3)["conv2"]
    assert lo == pytest.approx(0.0, abs=1e-6) and hi == pytest.approx(10.0 + 3.0, rel=1e-4)
    # end to end: a data-free 8-bit model of the wild net stays close to float
    net = _wild_net()
    f = dfq(net)
    q = quantize_model(f, 8, 8, first_last_bits=None)
    bias_correct(q, f)
    calibrate_activations(q, [torch.randn(8, 3, 12, 12)], progress=False)  # for the conv-fed linear
    done = set_bn_activation_ranges(q, f)              # overrides the data ranges where BN knows
    assert set(done) == {"3", "6"}                      # the two layers fed by BN -> ReLU
    s, z = q[3].act_quantizer.qparams()
    assert int(z) == 0 and float(s) == pytest.approx(done["3"][1] / 255, rel=1e-6)
    x = torch.randn(32, 3, 12, 12)
    ref = net(x)
    assert ((q(x) - ref) ** 2).mean() < 0.05 * (ref ** 2).mean()
