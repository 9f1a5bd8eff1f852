"""compat.accelerate(model, exact=False): one fused kernel per quantizer, equal to the research
quantizer up to values on a rounding tie (x * (1/s) vs x / s), which may move by one step."""
import copy

import pytest
import torch

from _support.compat_refs import (LSQFakeQuantize, LSQPlusFakeQuantize, OpCounter, UniformAffineQuantizer,  # noqa: F401
                              backend)
from zsq_engine import compat

SHAPE = (8, 16, 12, 12)


def _input(seed, device):
    return (torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)) * 1.5 + 0.3).to(device)


def _fwd_bwd(module, x, dy):
    x = x.clone().requires_grad_()
    for p in module.parameters():
        p.grad = None
    y = module(x)
    y.backward(dy)
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _assert_close_to_original(fast, ref, step, device):
    x, dy = _input(1, device), _input(2, device)
    y_f, dx_f, g_f = _fwd_bwd(fast, x, dy)
    y_r, dx_r, g_r = _fwd_bwd(ref, x, dy)
    differ = y_f != y_r
    assert float(differ.float().mean()) <= 1e-3, "more than rounding-tie differences"
    if differ.any():  # a tie that went the other way: exactly one step apart
        gap = (y_f - y_r).abs()[differ]
        torch.testing.assert_close(gap, torch.full_like(gap, float(step)), rtol=1e-4, atol=0)
    # the original's dx is dy * delta * (1 / delta) in fp32 (not always dy); ours is dy exactly
    off = (dx_f - dx_r).abs() > 1e-6 * dy.abs() + 1e-12
    assert float(off.float().mean()) <= 1e-3
    assert g_f.keys() == g_r.keys() and g_f
    for name in g_r:  # sums over all elements: a flipped tie moves them by about one element's share
        torch.testing.assert_close(g_f[name], g_r[name], rtol=2e-3, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_brecq_uniform_fast_is_one_fused_call(backend, monkeypatch):
    ref = UniformAffineQuantizer(4, leaf_param=True).to(backend)
    ref(_input(0, backend))  # lazy initialisation through the original forward
    fast = copy.deepcopy(ref)
    report = compat.accelerate(fast, exact=False)
    assert report.accelerated == [("", "brecq_uniform")] and "exact=False" in str(report)
    counter = OpCounter(monkeypatch)
    _assert_close_to_original(fast, ref, float(ref.delta.detach()), backend)
    assert counter.calls["lsq_fake_quant"] == 1 and counter.calls["fake_quant"] == 0


@pytest.mark.parametrize("cls", [LSQFakeQuantize, LSQPlusFakeQuantize])
@pytest.mark.parametrize("ch_axis", [-1, 1])
def test_qdrop_lsq_fast_matches_without_drop(backend, cls, ch_axis, monkeypatch):
    ref = cls(bit=4, ch_axis=ch_axis).to(backend)
    ref.observer_enabled, ref.fake_quant_enabled = 1, 1
    with torch.no_grad():
        ref(_input(0, backend) * 0.8)
    ref.observer_enabled = 0
    fast = copy.deepcopy(ref)
    compat.accelerate(fast, exact=False)
    counter = OpCounter(monkeypatch)
    step = ref.scale.detach().reshape(-1)
    # per-channel: check against the smallest step (any flipped tie moves by its channel's step)
    if ch_axis == -1:
        _assert_close_to_original(fast, ref, float(step), backend)
    else:
        x, dy = _input(1, backend), _input(2, backend)
        y_f, _, g_f = _fwd_bwd(fast, x, dy)
        y_r, _, g_r = _fwd_bwd(ref, x, dy)
        assert float((y_f != y_r).float().mean()) <= 1e-3
        for name in g_r:
            torch.testing.assert_close(g_f[name], g_r[name], rtol=2e-3, atol=1e-6)
    assert counter.calls["lsq_fake_quant"] == 1


def test_qdrop_fast_drop_is_fused_and_reproducible(backend):
    q = LSQFakeQuantize(bit=4).to(backend)
    q.observer_enabled, q.fake_quant_enabled = 1, 1
    with torch.no_grad():
        q(_input(0, backend))
    q.observer_enabled = 0
    q.drop_prob = 0.5
    compat.accelerate(q, exact=False)
    x = _input(3, backend)
    torch.manual_seed(5)
    a = q(x)
    torch.manual_seed(5)
    b = q(x)
    assert torch.equal(a, b)
    kept_float = float((a == x).float().mean())  # dropped elements pass through unchanged
    assert 0.45 < kept_float < 0.6


def test_exact_must_be_a_bool():
    with pytest.raises(TypeError, match="exact must be a bool"):
        compat.accelerate(torch.nn.Linear(2, 2), exact="no")
