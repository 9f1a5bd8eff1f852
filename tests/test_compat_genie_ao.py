"""Genie weight quantizer and torch.ao FakeQuantize / _LearnableFakeQuantize under compat.accelerate."""
import copy

import pytest
import torch
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

from _support.compat_refs import (GenieActivationQuantizer, GenieWeightQuantizer, OpCounter,  # noqa: F401
                              assert_same_state, backend, compare_records, run_steps)
from zsq_engine import compat

EPS32 = torch.finfo(torch.float32).eps


def _reduction_tol(records, name, numel):
    """fp32 sums of ``numel`` terms in another order: a few ulps of the largest partial sum."""
    big = max(r["grads"][name].abs().max().item() for r in records)
    return (4 * EPS32 * numel ** 0.5 * big + 1e-30, 4 * EPS32 * numel ** 0.5)


# ------------------------------------------------------------------ Genie

def test_genie_weight_hard_is_bit_exact(backend, monkeypatch):
    ref = GenieWeightQuantizer(torch.randn(16, 8, 3, 3)).to(backend)
    ref.x_floor, ref.zero_point = ref.x_floor.to(backend), ref.zero_point.to(backend)
    acc = copy.deepcopy(ref)
    report = compat.accelerate(acc)
    assert report.accelerated == [("", "genie_weight")]
    counter = OpCounter(monkeypatch)
    rec_acc = run_steps(acc, None, no_input=True)
    assert counter.calls["adaround_fake_quant"] == 3
    rec_ref = run_steps(ref, None, no_input=True)
    # hard rounding: no logit gradient; the scale gradient sums (q - zp) * dy in another order
    compare_records(rec_acc, rec_ref, tol={"scale": _reduction_tol(rec_ref, "scale", 8 * 9),
                                           "step:scale": (1e-6, 1e-6)})
    assert rec_acc[0]["grads"]["bit_logit"] is None
    assert_same_state(acc, ref)


def test_genie_weight_soft_within_kernel_rounding(backend):
    ref = GenieWeightQuantizer(torch.randn(16, 8, 3, 3)).to(backend)
    ref.x_floor, ref.zero_point = ref.x_floor.to(backend), ref.zero_point.to(backend)
    ref.train_mode = True
    acc = copy.deepcopy(ref)
    compat.accelerate(acc)
    rec_acc, rec_ref = run_steps(acc, None, no_input=True), run_steps(ref, None, no_input=True)
    scale_max = max(r["params"]["scale"].abs().max().item() for r in rec_ref)
    logit_big = max(r["grads"]["bit_logit"].abs().max().item() for r in rec_ref)
    # sigmoid evaluated by the kernel (an ulp of h moves the code value by an ulp of 16), the
    # logit-gradient factors multiplied in another order, the scale gradient summed in another order
    compare_records(rec_acc, rec_ref, tol={"y": (2 * 16 * EPS32 * scale_max, 0.0),
                                           "bit_logit": (8 * EPS32 * logit_big, 8 * EPS32),
                                           "scale": _reduction_tol(rec_ref, "scale", 8 * 9),
                                           "step:bit_logit": (1e-6, 1e-6), "step:scale": (1e-6, 1e-6)})
    assert list(acc.state_dict()) == list(ref.state_dict())  # the parameters' values were compared above


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("qdrop", [False, True])
def test_genie_activation_is_bit_exact(backend, signed, qdrop, monkeypatch):
    from zsq_engine.compat import genie

    ref = GenieActivationQuantizer(4)
    acc = copy.deepcopy(ref)
    report = compat.accelerate(acc)
    assert report.accelerated == [("", "genie_activation")]
    rounds = []
    monkeypatch.setattr(genie, "round_ste", lambda v: rounds.append(1) or compat.round_ste(v))

    def make(step):
        x = torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(step)) * 2
        return (x if signed else x.relu()).to(backend)

    for q in (ref, acc):
        q(make(-1))  # lazy scale initialisation (the original forward)
        q.train_mode = qdrop
    rec_acc = run_steps(acc, make)
    assert len(rounds) == 3  # the accelerated path ran on every step
    # outputs, QDrop masks (torch.rand_like), dx, d scale and the Adam step: all bit-equal
    compare_records(rec_acc, run_steps(ref, make))
    assert bool(acc.signed) == signed
    assert_same_state(acc, ref)


# ------------------------------------------------------------------ torch.ao

def _ao_fake_quantize(per_channel):
    if per_channel:
        return FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-8, quant_max=7,
                            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=1)
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=15, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine)


def _input(step, device):
    return (torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(step)) + 0.2).to(device)


@pytest.mark.parametrize("per_channel", [False, True])
def test_torch_ao_fake_quantize(backend, per_channel, monkeypatch):
    ref = _ao_fake_quantize(per_channel).to(backend)
    acc = copy.deepcopy(ref)
    report = compat.accelerate(acc)
    assert report.accelerated == [("", "torch_ao_fake_quantize")]
    counter = OpCounter(monkeypatch)
    rec_acc = run_steps(acc, lambda s: _input(s, backend))  # observer on: ranges move every step
    assert counter.calls["fake_quant"] == 3
    compare_records(rec_acc, run_steps(ref, lambda s: _input(s, backend)))
    assert_same_state(acc, ref)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("use_grad_scaling", [True, False])
def test_torch_ao_learnable_fake_quantize(backend, per_channel, use_grad_scaling, monkeypatch):
    if per_channel:
        ref = _LearnableFakeQuantize(MovingAveragePerChannelMinMaxObserver, quant_min=0, quant_max=15, channel_len=8,
                                     use_grad_scaling=use_grad_scaling, ch_axis=1, dtype=torch.quint8,
                                     qscheme=torch.per_channel_affine)
    else:
        ref = _LearnableFakeQuantize(MovingAverageMinMaxObserver, quant_min=0, quant_max=15,
                                     use_grad_scaling=use_grad_scaling, dtype=torch.quint8)
    ref = ref.to(backend)
    with torch.no_grad():
        ref(_input(-1, backend))  # static estimate first
    ref.enable_param_learning()
    acc = copy.deepcopy(ref)
    report = compat.accelerate(acc)
    assert report.accelerated == [("", "torch_ao_learnable")]
    counter = OpCounter(monkeypatch)
    rec_acc = run_steps(acc, lambda s: _input(s, backend))
    assert counter.calls["lsq_fake_quant"] == 3
    rec_ref = run_steps(ref, lambda s: _input(s, backend))
    numel = 4 * 6 * 6 if per_channel else 4 * 8 * 6 * 6
    # forward and dx bit-equal; d scale / d zero_point: the same terms summed in another order
    compare_records(rec_acc, rec_ref, tol={"scale": _reduction_tol(rec_ref, "scale", numel),
                                           "zero_point": _reduction_tol(rec_ref, "zero_point", numel),
                                           "step:scale": (1e-6, 1e-6), "step:zero_point": (1e-6, 1e-6)})
    # parameters were compared above (within tolerance); keys and buffers must be identical
    assert list(acc.state_dict()) == list(ref.state_dict())
    for name, buf in ref.named_buffers():
        assert torch.equal(dict(acc.named_buffers())[name], buf), name


def test_torch_ao_subclass_with_own_forward_is_skipped():
    from torch.ao.quantization import FusedMovingAvgObsFakeQuantize

    fq = FusedMovingAvgObsFakeQuantize()
    report = compat.accelerate(fq)
    assert report.accelerated == [] and report.skipped[0][1] == "FusedMovingAvgObsFakeQuantize"
    assert "forward" not in fq.__dict__
