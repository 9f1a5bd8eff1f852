"""reconstruct_model(..., act_init='bn'): reconstruction starts from DFQ's BN-derived activation ranges."""
import pytest
import torch
from torch import nn

from zsq_engine.recon import reconstruct_model


def chain():
    """conv1 -> BN -> ReLU -> conv2 -> ReLU -> conv3 (1x1). BN channel 0: beta 10, gamma 1; channel
    1: beta 20, gamma 2 (unit running variance), so the BN statistics put conv2's input in
    [max(0, 10 - 6), 20 + 6 * 2] = [4, 32] per tensor, widened to [0, 32] to hold zero."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.ReLU(),
                      nn.Conv2d(2, 2, 1))
    with torch.no_grad():
        m[0].weight.fill_(0.01)      # the real inputs hardly move the BN output off beta:
        m[0].bias.zero_()            # the data see conv2's input near (10, 20), not up to 32
        m[1].weight.copy_(torch.tensor([1.0, 2.0]))
        m[1].bias.copy_(torch.tensor([10.0, 20.0]))
        m[1].running_mean.zero_()
        m[1].running_var.fill_(1.0 - m[1].eps)
    return m.eval()


def top_of_range(layer):
    q = layer.act_quantizer
    return float((q.quant_max - q.zero_point.flatten()[0]) * q.scale.flatten()[0])


@pytest.mark.parametrize("act_init, expect", [("bn", 32.0), ("data", None)])
def test_act_init_sets_the_start_of_the_activation_ranges(act_init, expect):
    images = torch.randn(16, 1, 4, 4)
    res = reconstruct_model(chain(), images, 4, 4, iters=2, batch_size=8, first_last_bits=None,
                            show_progress=False, act_init=act_init, units=["3"])
    top = top_of_range(res.model.get_submodule("3"))
    if expect is not None:
        # 4-bit unsigned grid from 0: scale 32 / 15; two Adam steps of lr 4e-5 move it by < 1e-3
        assert top == pytest.approx(expect, rel=1e-3)
    else:
        # the observer sees conv2's real inputs, at most 20 + 0.01 * |x| * 2: nowhere near 32
        assert top < 22.0
    assert res.meta["act_init"] == act_init


def test_act_init_rejects_unknown_values():
    with pytest.raises(ValueError, match="act_init"):
        reconstruct_model(chain(), torch.randn(4, 1, 4, 4), 4, 4, iters=1, act_init="minmax", show_progress=False)
