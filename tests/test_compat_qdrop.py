"""QDrop-style LSQ / LSQ+ / fixed fake quantizers with and without compat.accelerate."""
import copy

import pytest
import torch

from _support.compat_refs import (FixedFakeQuantize, LSQFakeQuantize, LSQPlusFakeQuantize, OpCounter,  # noqa: F401
                              assert_same_state, backend, compare_records, run_steps)
from zsq_engine import compat

ACT_SHAPE = (4, 8, 6, 6)


def _input(step, device, shape=ACT_SHAPE):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(100 + step)) * 1.5 + 0.3).to(device)


def _calibrated(cls, device, ch_axis, shape=ACT_SHAPE, **kw):
    q = cls(bit=4, ch_axis=ch_axis, **kw).to(device)
    q.observer_enabled, q.fake_quant_enabled = 1, 1
    with torch.no_grad():
        q(_input(-1, device, shape) * 0.8)  # ranges a bit narrower than the data: some clamping
    q.observer_enabled = 0
    if cls is LSQPlusFakeQuantize:
        with torch.no_grad():  # a non-integer learned zero point, as after some LSQ+ steps
            q.zero_point.add_(0.3)
    return q


@pytest.mark.parametrize("cls,style", [(LSQFakeQuantize, "qdrop_lsq"), (LSQPlusFakeQuantize, "qdrop_lsq_plus"),
                                       (FixedFakeQuantize, "qdrop_fixed")])
@pytest.mark.parametrize("ch_axis", [-1, 1])
@pytest.mark.parametrize("drop_prob", [1.0, 0.5])
def test_qdrop_quantizers_match(backend, cls, style, ch_axis, drop_prob, monkeypatch):
    ref = _calibrated(cls, backend, ch_axis)
    ref.drop_prob = drop_prob
    acc = copy.deepcopy(ref)
    report = compat.accelerate(acc)
    assert report.accelerated == [("", style)]
    counter = OpCounter(monkeypatch)
    rec_acc = run_steps(acc, lambda step: _input(step, backend))
    assert counter.calls["fake_quant"] == 3
    rec_ref = run_steps(ref, lambda step: _input(step, backend))
    # same QDrop masks (torch.rand_like), outputs, dx, scale / zero-point gradients, Adam updates
    compare_records(rec_acc, rec_ref)
    assert_same_state(acc, ref)


@pytest.mark.parametrize("use_grad_scaling", [True, False])
def test_lsq_weight_per_channel_axis0(backend, use_grad_scaling):
    shape = (16, 8, 3, 3)
    ref = _calibrated(LSQPlusFakeQuantize, backend, 0, shape, use_grad_scaling=use_grad_scaling)
    acc = copy.deepcopy(ref)
    compat.accelerate(acc)
    compare_records(run_steps(acc, lambda s: _input(s, backend, shape)), run_steps(ref, lambda s: _input(s, backend, shape)))


def test_observer_step_runs_the_original_then_fuses(backend, monkeypatch):
    ref = LSQFakeQuantize(bit=4, ch_axis=-1).to(backend)
    acc = copy.deepcopy(ref)
    compat.accelerate(acc)
    counter = OpCounter(monkeypatch)
    for q in (ref, acc):
        q.observer_enabled, q.fake_quant_enabled = 1, 1
    x = _input(0, backend)
    assert torch.equal(acc(x), ref(x))  # calibration through the original forward
    assert counter.calls["fake_quant"] == 0
    for q in (ref, acc):
        q.observer_enabled = 0
    assert torch.equal(acc(x), ref(x))
    assert counter.calls["fake_quant"] == 1
    assert_same_state(acc, ref)
