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


def test_bias_correction_before_reconstruction_by_hand():
    # conv2's input is BN -> ReLU with (beta, gamma) = (10, 1) and (20, 2): the ReLU never clips
    # (10 sigma), so E[x] = (10, 20) exactly enough, and the corrected bias is
    # b - (W_q - W) (10, 20) with W_q the nearest rounding on the initial grid
    from zsq_engine.quant import quantize_model
    from zsq_engine.quant.bias_grid import accumulator_scale

    m = chain()
    with torch.no_grad():
        m[3].weight.copy_(torch.tensor([[0.33, 0.71], [0.52, -0.27]]).reshape(2, 2, 1, 1))
        m[3].bias.copy_(torch.tensor([0.5, -0.25]))
    start = quantize_model(m, 4, 4, first_last_bits=None, weight_method="mse").eval().get_submodule("3")
    err = (start.quantized_weight() - start.weight).detach().double().flatten(1)
    expect = torch.tensor([0.5, -0.25], dtype=torch.float64) - err @ torch.tensor([10.0, 20.0], dtype=torch.float64)
    images = torch.randn(16, 1, 4, 4)
    out = {}
    for bc in (True, False):
        res = reconstruct_model(m, images, 4, 4, iters=1, batch_size=8, first_last_bits=None, show_progress=False,
                                bias_correction=bc, units=["3"])
        layer = res.model.get_submodule("3")
        # the end of the run snaps biases onto the accumulator grid s_x s_w[o]: half a step of slack
        tol = 0.5 * accumulator_scale(layer, "3").double() + 1e-6
        out[bc] = (layer.bias.detach().double(), tol)
        assert res.meta["bias_correction"] is bc
    bias, tol = out[True]
    assert torch.all((bias - expect).abs() <= tol), (bias, expect, tol)
    plain, tol = out[False]
    assert torch.all((plain - torch.tensor([0.5, -0.25], dtype=torch.float64)).abs() <= tol)
    assert float((expect - torch.tensor([0.5, -0.25], dtype=torch.float64)).abs().max()) > 3 * float(tol.max())
