"""DFQ's pair choice for per-channel weight grids, and the weight-only KL of bit allocation."""
import torch
from torch import nn

from zsq_engine.models.efficientnet_lite import BlockArgs, EfficientNetLite
from zsq_engine.quant import quantize_model
from zsq_engine.quant.bit_allocation import layer_sensitivity, weight_kl
from zsq_engine.synth_free import dfq, find_equalization_pairs
from zsq_engine.synth_free.equalize import equalization_scales, first_ranges, grids_invariant, second_ranges


def _net():
    torch.manual_seed(0)
    blocks = (BlockArgs(1, 3, 1, 1, 16, 8), BlockArgs(1, 5, 2, 6, 8, 16))
    m = EfficientNetLite(blocks, num_classes=10, stem_channels=16, head_channels=32)
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            c = mod.num_features
            mod.weight.data = torch.exp(torch.randn(c, generator=g) * 1.5)
            mod.bias.data = torch.randn(c, generator=g)
            mod.running_var.data = torch.rand(c, generator=g) + 0.5
    return m.eval()


def _per_channel_rel_error(w, bits=4):
    # per-output-channel symmetric min-max grid: error relative to each channel's range
    flat = w.detach().double().flatten(1)
    s = flat.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
    return ((torch.round(flat / s) * s - flat) / s).abs().sum()


def test_depthwise_second_pairs_leave_per_channel_grids_unchanged():
    m = _net()
    pairs = find_equalization_pairs(m)
    dw = [p for p in pairs if grids_invariant(m, p)]
    dense = [p for p in pairs if not grids_invariant(m, p)]
    assert dw and dense
    assert all(m.get_submodule(p.second).groups > 1 for p in dw)
    for p in pairs:
        first, second = m.get_submodule(p.first), m.get_submodule(p.second)
        s = equalization_scales(first_ranges(first, m.get_submodule(p.bn)), second_ranges(second))
        groups = getattr(second, "groups", 1)
        w2 = second.weight.detach().double()
        v = w2.reshape(groups, w2.shape[0] // groups, w2.shape[1], -1) * s.reshape(groups, 1, -1, 1)
        before, after = _per_channel_rel_error(w2), _per_channel_rel_error(v.reshape(w2.shape))
        if grids_invariant(m, p):   # each row scaled as a whole: the same codes, the same relative error
            torch.testing.assert_close(after, before)
        else:
            assert not torch.allclose(after, before)


def test_dfq_per_channel_pairs_skips_exactly_the_invariant_pairs_and_stays_equivalent():
    m = _net()
    x = torch.randn(3, 3, 32, 32)
    _, all_pairs = dfq(m, return_pairs=True, absorb_bias=False)
    out, pairs = dfq(m, return_pairs=True, absorb_bias=False, per_channel_weights=True)
    assert [p.second for p in pairs] == [p.second for p in all_pairs if not grids_invariant(m, p)]
    torch.testing.assert_close(out(x), m(x), rtol=1e-4, atol=1e-4)


def test_weight_kl_matches_the_nearest_rounding_sensitivity():
    m = _net()
    images = torch.randn(8, 3, 16, 16)
    sens = layer_sensitivity(m, images, weight_bits=(3,), act_bits=(8,), weight_method="minmax")
    q = quantize_model(m, 3, 8, first_last_bits=None, weight_method="minmax")
    kl = weight_kl(q, m, images)
    assert set(kl) == set(sens)
    for name, v in kl.items():
        assert abs(v - sens[name][("w", 3)]) <= 1e-9 + 1e-6 * abs(v)
    assert max(kl.values()) > 0
