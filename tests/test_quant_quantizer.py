"""QuantSpec and UniformQuantizer against PyTorch's native fake-quant ops."""
import itertools

import pytest
import torch

from zsq_engine.quant import SCALE_EPS, QuantSpec, UniformQuantizer

BITS = range(2, 9)
# (symmetric, signed): every combination of grid and zero-point rule
KINDS = [(False, False), (False, True), (True, True), (True, False)]
AXES = [None, 0, 1, 2, 3, -1]


def _native(x, scale, zp, qmin, qmax, axis):
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(1), zp.reshape(1).to(torch.int32), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zp.to(torch.int32), axis % x.dim(), qmin, qmax)


def _random_qparams(spec, channels, gen):
    scale = torch.rand(channels, generator=gen) * 0.5 + 0.01
    if spec.symmetric:
        return scale, None
    zp = torch.randint(spec.quant_min, spec.quant_max + 1, (channels,), generator=gen).float()
    return scale, zp


def test_spec_grids():
    for b in BITS:
        assert (QuantSpec(b, symmetric=True).quant_min, QuantSpec(b, symmetric=True).quant_max) == \
            (-(2 ** (b - 1)), 2 ** (b - 1) - 1)
        assert (QuantSpec(b).quant_min, QuantSpec(b).quant_max) == (0, 2 ** b - 1)
        assert QuantSpec(b, symmetric=False, signed=True).quant_min == -(2 ** (b - 1))
        assert QuantSpec(b, symmetric=True, signed=False).quant_max == 2 ** b - 1


@pytest.mark.parametrize("bad", [1, 9, 0, 16, -3])
def test_spec_rejects_bits(bad):
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(bits=bad)


@pytest.mark.parametrize("bad", [4.0, True, "8"])
def test_spec_rejects_non_int_bits(bad):
    with pytest.raises(TypeError, match="bits"):
        QuantSpec(bits=bad)


def test_spec_rejects_bad_flags_and_axis():
    with pytest.raises(TypeError, match="symmetric"):
        QuantSpec(symmetric=1)
    with pytest.raises(TypeError, match="signed"):
        QuantSpec(signed="yes")
    with pytest.raises(TypeError, match="axis"):
        QuantSpec(per_channel=True, axis=1.5)
    spec = QuantSpec(per_channel=True, axis=4)
    with pytest.raises(ValueError, match="axis=4"):
        spec.resolve_axis(4)
    assert QuantSpec(per_channel=True, axis=-1).resolve_axis(4) == 3
    assert QuantSpec(per_channel=False, axis=7).resolve_axis(2) is None


@pytest.mark.slow
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric,signed", KINDS)
@pytest.mark.parametrize("axis", AXES)
def test_forward_matches_native(bits, symmetric, signed, axis):
    gen = torch.Generator().manual_seed(bits * 100 + (axis or 0) * 7 + 3 * symmetric + signed)
    x = torch.randn(3, 5, 4, 7, generator=gen) * 3
    spec = QuantSpec(bits, symmetric=symmetric, signed=signed, per_channel=axis is not None,
                     axis=axis if axis is not None else 0)
    channels = 1 if axis is None else x.shape[axis]
    q = UniformQuantizer(spec)
    scale, zp = _random_qparams(spec, channels, gen)
    q.set_qparams(scale, zp)
    zp_used = q.zero_point
    if symmetric:
        expected_zp = 0 if signed else 2 ** (bits - 1)
        assert torch.equal(zp_used, torch.full((channels,), float(expected_zp)))
    ref = _native(x, scale, zp_used, spec.quant_min, spec.quant_max, axis)
    torch.testing.assert_close(q(x), ref, rtol=1e-6, atol=1e-6)
    # straight-through gradient equals the native mask
    xg = x.clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    dy = torch.randn(x.shape, generator=gen)
    q(xg).backward(dy)
    _native(xr, scale, zp_used, spec.quant_min, spec.quant_max, axis).backward(dy)
    torch.testing.assert_close(xg.grad, xr.grad, rtol=0, atol=0)


@pytest.mark.parametrize("bits,axis,symmetric", [(8, None, False), (4, 0, False), (3, 1, True), (2, -1, False)])
def test_learnable_gradients_match_native(bits, axis, symmetric):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(4, 6, 5, generator=gen) * 2
    spec = QuantSpec(bits, symmetric=symmetric, per_channel=axis is not None, axis=axis or 0)
    channels = 1 if axis is None else x.shape[axis]
    q = UniformQuantizer(spec, learnable=True, grad_factor=0.5)
    scale, zp = _random_qparams(spec, channels, gen)
    q.set_qparams(scale, zp)
    assert isinstance(q.scale, torch.nn.Parameter)
    assert isinstance(q.zero_point, torch.nn.Parameter) != symmetric
    xg = x.clone().requires_grad_(True)
    dy = torch.randn(x.shape, generator=gen)
    q(xg).backward(dy)
    assert q.scale.grad is not None and torch.isfinite(q.scale.grad).all() and q.scale.grad.abs().sum() > 0
    if not symmetric:
        assert q.zero_point.grad is not None and torch.isfinite(q.zero_point.grad).all()

    s_ref = q.scale.detach().clone().requires_grad_(True)
    z_ref = q.zero_point.detach().clone().float().requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    if axis is None:
        y = torch._fake_quantize_learnable_per_tensor_affine(x_ref, s_ref, z_ref, spec.quant_min, spec.quant_max, 0.5)
    else:
        y = torch._fake_quantize_learnable_per_channel_affine(x_ref, s_ref, z_ref, axis % x.dim(), spec.quant_min,
                                                              spec.quant_max, 0.5)
    y.backward(dy)
    torch.testing.assert_close(xg.grad, x_ref.grad)
    torch.testing.assert_close(q.scale.grad, s_ref.grad, rtol=1e-4, atol=1e-4)
    if not symmetric:
        torch.testing.assert_close(q.zero_point.grad, z_ref.grad, rtol=1e-4, atol=1e-4)


def test_default_lsq_grad_factor():
    x = torch.randn(8, 16)
    q = UniformQuantizer(QuantSpec(4), learnable=True).set_qparams(torch.tensor([0.2]), torch.tensor([8.0]))
    q(x).sum().backward()
    s = q.scale.detach().clone().requires_grad_(True)
    z = q.zero_point.detach().clone().requires_grad_(True)
    torch._fake_quantize_learnable_per_tensor_affine(x, s, z, 0, 15, 1.0 / (x.numel() * 15) ** 0.5).sum().backward()
    torch.testing.assert_close(q.scale.grad, s.grad, rtol=1e-4, atol=1e-6)


def test_uncalibrated_and_disabled():
    q = UniformQuantizer(QuantSpec(4))
    x = torch.randn(5)
    with pytest.raises(RuntimeError, match="before calibration"):
        q(x)
    q.enabled = False
    assert q(x) is x


def test_axis_out_of_range_and_channel_mismatch():
    q = UniformQuantizer(QuantSpec(8, per_channel=True, axis=3), num_channels=4)
    q.set_qparams(torch.ones(4), torch.zeros(4))
    with pytest.raises(ValueError, match="axis=3"):
        q(torch.randn(4, 4))
    q2 = UniformQuantizer(QuantSpec(8, per_channel=True, axis=0)).set_qparams(torch.ones(3), torch.zeros(3))
    with pytest.raises(ValueError, match="channels"):
        q2(torch.randn(4, 2))


def test_set_qparams_validation():
    q = UniformQuantizer(QuantSpec(8))
    with pytest.raises(ValueError, match="one element"):
        q.set_qparams(torch.ones(2), torch.zeros(2))
    with pytest.raises(ValueError, match="zero_point is required"):
        q.set_qparams(torch.ones(1))
    qc = UniformQuantizer(QuantSpec(8, per_channel=True))
    with pytest.raises(ValueError, match="shape of scale"):
        qc.set_qparams(torch.ones(3), torch.zeros(2))
    # the zero point is rounded and clamped into the grid
    q.set_qparams(torch.ones(1), torch.tensor([300.4]))
    assert q.zero_point.item() == 255.0
    assert q.integer_zero_point().dtype == torch.int32


@pytest.mark.parametrize("value", [0.0, 3.5, -2.0])
def test_degenerate_scale_is_clamped(value):
    from zsq_engine.quant import calibrate_weight
    for symmetric in (False, True):
        q = UniformQuantizer(QuantSpec(4, symmetric=symmetric, per_channel=True), num_channels=3)
        w = torch.full((3, 4), value)
        calibrate_weight(q, w, "minmax")
        assert (q.scale >= SCALE_EPS).all() and torch.isfinite(q.scale).all()
        y = q(w)
        assert torch.isfinite(y).all()
        q.set_qparams(torch.zeros(3), torch.zeros(3))
        assert (q.scale == SCALE_EPS).all()
        assert torch.isfinite(q(w)).all()


def test_learnable_roundtrip_and_state_dict():
    spec = QuantSpec(4, per_channel=True, axis=1)
    q = UniformQuantizer(spec).set_qparams(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 7.0, 15.0]))
    x = torch.randn(2, 3, 5)
    y = q(x)
    q.set_learnable(True)
    assert isinstance(q.scale, torch.nn.Parameter) and "scale" not in dict(q.named_buffers())
    torch.testing.assert_close(q(x), y)
    q.set_learnable(False)
    assert not isinstance(q.scale, torch.nn.Parameter) and "scale" in dict(q.named_buffers())
    # a fresh quantizer of unknown channel count adopts the shape and counts as calibrated
    fresh = UniformQuantizer(spec)
    assert fresh.scale.numel() == 0 and not fresh.calibrated
    fresh.load_state_dict(q.state_dict())
    assert fresh.calibrated
    torch.testing.assert_close(fresh(x), y)
    learn = UniformQuantizer(spec, learnable=True)
    learn.load_state_dict(q.state_dict())
    torch.testing.assert_close(learn(x), y)


def test_repr_mentions_bits():
    text = repr(UniformQuantizer(QuantSpec(3, symmetric=True)))
    assert "bits=3" in text and "range=[-4, 3]" in text


def test_all_kinds_cover_range_after_minmax_calibration():
    # sanity over the whole grid: min-max calibrated quantizers reconstruct within half a step
    from zsq_engine.quant import calibrate_weight
    x = torch.randn(6, 50)
    for bits, (symmetric, signed) in itertools.product(BITS, KINDS):
        q = UniformQuantizer(QuantSpec(bits, symmetric=symmetric, signed=signed, per_channel=True), num_channels=6)
        calibrate_weight(q, x, "minmax")
        err = (q(x) - x).abs().amax(dim=1)
        assert (err <= q.scale * 0.5 + 1e-5).all(), (bits, symmetric, signed)
