"""BRECQ-style UniformAffineQuantizer / AdaRoundQuantizer with and without compat.accelerate."""
import copy

import pytest
import torch

from _support.compat_refs import (AdaRoundQuantizer, OpCounter, UniformAffineQuantizer, assert_same_state,  # noqa: F401
                              backend, compare_records, run_steps)
from zsq_engine import compat

EPS32 = torch.finfo(torch.float32).eps


def _pair(module, device):
    ref = module.to(device)
    acc = copy.deepcopy(ref)
    report = compat.accelerate(acc)
    return ref, acc, report


@pytest.mark.parametrize("leaf_param", [False, True])
def test_uniform_affine_activation_per_tensor(backend, leaf_param, monkeypatch):
    ref, acc, report = _pair(UniformAffineQuantizer(4, leaf_param=leaf_param), backend)
    assert report.accelerated == [("", "brecq_uniform")] and not report.skipped
    counter = OpCounter(monkeypatch)
    make = lambda step: (torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(step)) * 2).to(backend)
    rec_acc = run_steps(acc, make)
    assert counter.calls["fake_quant"] == 2  # step 0 initialises through the original forward
    rec_ref = run_steps(ref, make)
    compare_records(rec_acc, rec_ref)  # outputs, dx, d delta and the Adam update: all bit-equal
    assert acc.inited and isinstance(acc.delta, torch.nn.Parameter) == leaf_param
    assert_same_state(acc, ref)


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (12, 20)])
def test_uniform_affine_weight_per_channel_mse(backend, shape):
    weight = torch.randn(shape)
    weight[0] = weight[0].abs() + 0.5  # a channel with a zero point outside [0, 15]
    ref, acc, _ = _pair(UniformAffineQuantizer(4, channel_wise=True, scale_method="mse"), backend)
    w = weight.to(backend)
    rec_ref = run_steps(ref, lambda step: w.clone())
    assert ref.delta.shape == (shape[0],) + (1,) * (len(shape) - 1)
    assert float(ref.zero_point.reshape(-1)[0]) < 0
    compare_records(run_steps(acc, lambda step: w.clone()), rec_ref)


def _adaround_pair(device, soft):
    weight = torch.randn(16, 8, 3, 3)
    uaq = UniformAffineQuantizer(4, channel_wise=True, scale_method="mse")
    uaq(weight)
    ref = AdaRoundQuantizer(uaq, weight)
    ref.soft_targets = soft
    # plain tensor attributes, not buffers: Module.to() leaves them where they are
    ref.delta, ref.zero_point = ref.delta.to(device), ref.zero_point.to(device)
    ref, acc, report = _pair(ref, device)
    acc.delta, acc.zero_point = ref.delta, ref.zero_point  # shared tensors, as in BRECQ
    return weight.to(device), ref, acc, report


def test_adaround_hard_is_bit_exact(backend, monkeypatch):
    weight, ref, acc, report = _adaround_pair(backend, soft=False)
    assert report.accelerated == [("", "brecq_adaround")]
    counter = OpCounter(monkeypatch)
    rec_acc = run_steps(acc, lambda step: weight.clone())
    assert counter.calls["adaround_fake_quant"] == 3
    compare_records(rec_acc, run_steps(ref, lambda step: weight.clone()))
    assert_same_state(acc, ref)


def test_adaround_soft_matches_within_kernel_rounding(backend):
    weight, ref, acc, _ = _adaround_pair(backend, soft=True)
    rec_acc = run_steps(acc, lambda step: weight.clone())
    rec_ref = run_steps(ref, lambda step: weight.clone())
    # The kernels evaluate sigmoid themselves and multiply the alpha gradient's factors in
    # another order: h may differ by an ulp, which moves floor + h + zp (< 16) by at most one ulp
    # of 16, i.e. the weight by 16 * eps * delta; each alpha-gradient factor by half an ulp.
    delta_max = ref.delta.abs().max().item()
    y_tol = 2 * 16 * EPS32 * delta_max
    grad_scale = max(r["grads"]["alpha"].abs().max().item() for r in rec_ref)
    compare_records(rec_acc, rec_ref, tol={"y": (y_tol, 0.0), "dx": (0.0, 0.0),
                                          "alpha": (8 * EPS32 * grad_scale, 8 * EPS32),
                                          "step:alpha": (1e-6, 1e-6)})
    assert list(acc.state_dict()) == list(ref.state_dict())  # alpha's values were compared above


def test_adaround_nearest_mode_runs_the_original(backend, monkeypatch):
    weight, ref, acc, _ = _adaround_pair(backend, soft=False)
    acc.round_mode = ref.round_mode = "nearest"
    counter = OpCounter(monkeypatch)
    assert torch.equal(acc(weight), ref(weight))
    assert sum(counter.calls.values()) == 0


def test_block_reconstruction_steps_match(backend):
    """A BRECQ weight+activation reconstruction loop (soft AdaRound, learnable activation step,
    lp_loss + rounding regulariser, Adam) with and without accelerate + compat.lp_loss."""
    from _support.compat_refs import lp_loss_ref, rectified_sigmoid_ref

    torch.manual_seed(0)
    x = torch.randn(4, 8, 10, 10).relu().to(backend)
    weight = (torch.randn(8, 8, 3, 3) * 0.2).to(backend)
    target = torch.randn(4, 8, 10, 10).relu().to(backend)
    uaq = UniformAffineQuantizer(4, channel_wise=True)
    uaq(weight)
    ada = AdaRoundQuantizer(uaq, weight)
    ada.soft_targets = True
    act = UniformAffineQuantizer(4, leaf_param=True)
    act(torch.nn.functional.conv2d(x, weight, padding=1).relu())
    ref = torch.nn.ModuleDict({"w": ada, "a": act})
    acc = copy.deepcopy(ref)
    alpha0, delta0 = ada.alpha.detach().clone(), act.delta.detach().clone()
    assert [s for _, s in compat.accelerate(acc).accelerated] == ["brecq_adaround", "brecq_uniform"]
    history = []
    for model, loss_fn in ((ref, lp_loss_ref), (acc, compat.lp_loss)):
        opt = torch.optim.Adam([{"params": [model["w"].alpha], "lr": 1e-2}, {"params": [model["a"].delta], "lr": 1e-3}])
        losses = []
        for _ in range(4):
            opt.zero_grad()
            out = model["a"](torch.nn.functional.conv2d(x, model["w"](weight), padding=1).relu())
            h = rectified_sigmoid_ref(model["w"].alpha)
            loss = loss_fn(out, target, p=2.0) + 0.01 * (1 - (2 * h - 1).abs().pow(20.0)).sum()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        history.append((torch.stack(losses), model["w"].alpha.detach(), model["a"].delta.detach()))
    (loss_r, alpha_r, delta_r), (loss_a, alpha_a, delta_a) = history
    # soft AdaRound moves a weight by at most an ulp of its integer code (see the soft test);
    # through a conv and four Adam steps that stays many orders below the quantization step
    torch.testing.assert_close(loss_a, loss_r, rtol=1e-5, atol=0)
    torch.testing.assert_close(alpha_a, alpha_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(delta_a, delta_r, rtol=1e-5, atol=0)
    assert not torch.equal(delta_r, delta0) and not torch.equal(alpha_r, alpha0)  # the loop did train both
