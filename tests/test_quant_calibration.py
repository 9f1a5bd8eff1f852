"""Observers against direct computation over all batches concatenated."""
import pytest
import torch

from zsq_engine import ops
from zsq_engine.quant import (MinMaxObserver, MSEObserver, PercentileObserver, QuantSpec, UniformQuantizer,
                              calibrate_weight, make_observer, qparams_from_minmax)


def _batches(seed=0, n=4, shape=(3, 5, 6, 6)):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) * (i + 1) + 0.3 * i for i in range(n)]


def _rows(x, axis):
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("symmetric", [False, True])
def test_minmax_observer_matches_aminmax(axis, symmetric):
    spec = QuantSpec(6, symmetric=symmetric, per_channel=axis is not None, axis=axis or 0)
    obs = MinMaxObserver(spec)
    batches = _batches(1)
    if axis == 0:  # per-channel along the batch axis: channels must agree, so equal batch sizes
        batches = [b[:3] for b in batches]
    for b in batches:
        obs.update(b)
    cat_dim = 1 if axis == 0 else 0
    allx = torch.cat(batches, dim=cat_dim)
    mn, mx = torch.aminmax(_rows(allx, axis), dim=1)
    assert torch.equal(obs.min_val, mn) and torch.equal(obs.max_val, mx)
    scale, zp = obs.compute_qparams()
    ref_scale, ref_zp = ops.minmax_qparams(mn, mx, spec.quant_min, spec.quant_max, symmetric=symmetric)
    torch.testing.assert_close(scale, ref_scale)
    torch.testing.assert_close(zp, ref_zp.float())
    assert scale.shape == (1 if axis is None else allx.shape[axis],)


def test_minmax_range_contains_zero():
    spec = QuantSpec(8)
    obs = MinMaxObserver(spec)
    obs.update(torch.rand(100) + 2.0)  # all positive: range widened down to 0
    scale, zp = obs.compute_qparams()
    assert zp.item() == 0.0
    assert scale.item() == pytest.approx(obs.max_val.item() / 255, rel=1e-6)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_percentile_observer_matches_quantile(symmetric, per_channel):
    spec = QuantSpec(8, symmetric=symmetric, per_channel=per_channel, axis=1)
    obs = PercentileObserver(spec, percentile=99.0)
    batches = _batches(2)
    for b in batches:
        obs.update(b)
    allx = _rows(torch.cat(batches), 1 if per_channel else None)
    if symmetric:
        hi = torch.quantile(allx.abs(), 0.99, dim=1)
        lo = -hi
    else:
        lo = torch.quantile(allx, 0.01, dim=1)
        hi = torch.quantile(allx, 0.99, dim=1)
    ref = qparams_from_minmax(spec, lo, hi)
    scale, zp = obs.compute_qparams()
    torch.testing.assert_close(scale, ref[0])
    torch.testing.assert_close(zp, ref[1])


def test_percentile_observer_subsampled_estimate():
    gen = torch.Generator().manual_seed(5)
    batches = [torch.randn(64, 4096, generator=gen) for _ in range(3)]  # 262k values per batch
    obs = PercentileObserver(QuantSpec(8), percentile=99.9, max_samples_per_batch=2 ** 15)
    for b in batches:
        obs.update(b)
    assert obs.samples().numel() == 3 * 2 ** 15
    exact_hi = torch.quantile(torch.cat(batches).flatten(), 0.999).item()
    est_hi = torch.quantile(obs.samples(), 0.999).item()
    assert est_hi == pytest.approx(exact_hi, rel=0.05)


def test_mse_observer_matches_scale_search():
    spec = QuantSpec(4, per_channel=True, axis=1)
    obs = MSEObserver(spec)
    batches = _batches(3)
    for b in batches:
        obs.update(b)
    allx = torch.cat(batches)
    ref_scale, ref_zp = ops.scale_search(allx, spec.quant_min, spec.quant_max, axis=1, num_candidates=80, p=2.4)
    scale, zp = obs.compute_qparams()
    torch.testing.assert_close(scale, ref_scale)
    torch.testing.assert_close(zp, ref_zp.float())


def _lp_error(x, spec, scale, zp, p=2.4):
    q = UniformQuantizer(spec).set_qparams(scale, zp)
    return (q(x) - x).abs().pow(p).mean().item()


@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_beats_minmax_on_heavy_tails(symmetric):
    gen = torch.Generator().manual_seed(7)
    # Laplace(0, 1) by inverse CDF: the rare tail values set the min-max range, wasting levels
    u = torch.rand(20000, generator=gen) - 0.5
    x = -torch.sign(u) * torch.log1p(-2 * u.abs())
    spec = QuantSpec(4, symmetric=symmetric)
    mm, mse = MinMaxObserver(spec), MSEObserver(spec)
    for chunk in x.split(5000):
        mm.update(chunk)
        mse.update(chunk)
    err_mm = _lp_error(x, spec, *mm.compute_qparams())
    err_mse = _lp_error(x, spec, *mse.compute_qparams())
    assert err_mse < 0.5 * err_mm


def test_calibrate_weight_paths():
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(8, 3, 3, 3, generator=gen)
    spec = QuantSpec(4, per_channel=True, axis=0)
    q = calibrate_weight(UniformQuantizer(spec, num_channels=8), w, "mse")
    ref_scale, ref_zp = ops.scale_search(w, 0, 15, axis=0, num_candidates=80, p=2.4)
    torch.testing.assert_close(q.scale, ref_scale)
    torch.testing.assert_close(q.zero_point, ref_zp.float())
    q100 = calibrate_weight(UniformQuantizer(spec, num_channels=8), w, "mse", num_candidates=100)
    assert q100.calibrated
    qmm = calibrate_weight(UniformQuantizer(spec, num_channels=8), w, "minmax")
    mn, mx = torch.aminmax(w.reshape(8, -1), dim=1)
    torch.testing.assert_close(qmm.scale, ((mx.clamp(min=0) - mn.clamp(max=0)) / 15))
    with pytest.raises(ValueError, match="method"):
        calibrate_weight(q, w, "kl")


def test_observer_errors():
    obs = MinMaxObserver(QuantSpec(8, per_channel=True, axis=1))
    with pytest.raises(RuntimeError, match="no data"):
        obs.compute_qparams()
    obs.update(torch.randn(2, 3))
    with pytest.raises(ValueError, match="channels"):
        obs.update(torch.randn(2, 4))
    with pytest.raises(TypeError):
        obs.update(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="method"):
        make_observer("histogram", QuantSpec(8))
    with pytest.raises(ValueError, match="percentile"):
        PercentileObserver(QuantSpec(8), percentile=20)
    with pytest.raises(ValueError, match="num_candidates"):
        MSEObserver(QuantSpec(8), num_candidates=0)


def test_quantizer_observer_passthrough():
    q = UniformQuantizer(QuantSpec(8))
    q.observer = make_observer("minmax", q.spec)
    x = torch.randn(10)
    assert q(x) is x  # observing passes the input through, even uncalibrated
    assert q.observer.num_batches == 1
    q.set_qparams(*q.observer.compute_qparams())
    q.observer = None
    assert not torch.equal(q(x), x)
