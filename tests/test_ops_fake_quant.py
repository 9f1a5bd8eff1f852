"""fake_quant and lsq_fake_quant against PyTorch's native fake-quant ops (the independent oracle)."""
import itertools

import pytest
import torch
from _support.numerics import non_contiguous, quant_range, random_qparams

from zsq_engine import ops

SHAPES = [(1,), (7,), (123,), (1025,), (3, 7), (2, 3, 5), (2, 3, 4, 5)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BITS = [2, 3, 4, 8]


def _native_per_tensor(x, scale, zp, qmin, qmax):
    return torch.fake_quantize_per_tensor_affine(x, scale, zp.to(torch.int32), qmin, qmax)


def _native_per_channel(x, scale, zp, axis, qmin, qmax):
    return torch.fake_quantize_per_channel_affine(x, scale, zp.to(torch.int32), axis, qmin, qmax)


def _inputs(shape, dtype, device, scale_max=0.2):
    # values spanning well beyond the clamp range of every bit-width, so both branches are hit
    return (torch.randn(shape) * 3 * scale_max * 8).to(dtype).to(device)


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits,signed", list(itertools.product(BITS, [True, False])))
def test_fake_quant_per_tensor_matches_native(shape, dtype, bits, signed, device):
    qmin, qmax = quant_range(bits, signed)
    x = _inputs(shape, dtype, device).requires_grad_()
    scale, zp = random_qparams(1, qmin, qmax, device)
    y = ops.fake_quant(x, scale, zp, qmin, qmax)
    dy = torch.randn(shape, device=device).to(dtype)
    (dx,) = torch.autograd.grad(y, x, dy)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = _native_per_tensor(x_ref, scale, zp, qmin, qmax)
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, dy)
    assert y.dtype == dtype and torch.equal(y, y_ref)
    assert torch.equal(dx, dx_ref)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 5), (2, 3, 4, 5), (1, 123)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits,signed", [(2, True), (4, False), (3, False), (8, True)])
def test_fake_quant_per_channel_every_axis(shape, dtype, bits, signed, device):
    qmin, qmax = quant_range(bits, signed)
    for axis in range(len(shape)):
        x = _inputs(shape, dtype, device).requires_grad_()
        scale, zp = random_qparams(shape[axis], qmin, qmax, device)
        y = ops.fake_quant(x, scale, zp, qmin, qmax, axis=axis)
        dy = torch.randn(shape, device=device).to(dtype)
        (dx,) = torch.autograd.grad(y, x, dy)
        x_ref = x.detach().clone().requires_grad_()
        y_ref = _native_per_channel(x_ref, scale, zp, axis, qmin, qmax)
        (dx_ref,) = torch.autograd.grad(y_ref, x_ref, dy)
        assert torch.equal(y, y_ref), f"axis {axis}"
        assert torch.equal(dx, dx_ref), f"axis {axis}"
        # negative axis means the same channel axis
        assert torch.equal(ops.fake_quant(x, scale, zp, qmin, qmax, axis=axis - len(shape)), y)


def test_fake_quant_non_contiguous_and_ties(device):
    qmin, qmax = -8, 7
    scale = torch.tensor([0.5], device=device)
    zp = torch.tensor([1], dtype=torch.int32, device=device)
    # exact ties x/s = k + 0.5 (round half to even) and values on the clamp boundaries
    ties = torch.arange(-12, 12, dtype=torch.float32, device=device) * 0.5 + 0.25
    boundary = torch.tensor([(qmin - 1) * 0.5, qmax * 0.5 - 0.5, (qmax - 1) * 0.5, (qmax - 1) * 0.5 + 0.25],
                            device=device)
    x = torch.cat([ties, boundary]).reshape(2, -1).t()  # transposed: non-contiguous
    assert not x.is_contiguous()
    assert torch.equal(ops.fake_quant(x, scale, zp, qmin, qmax), _native_per_tensor(x, scale, zp, qmin, qmax))
    xs = non_contiguous(torch.randn(4, 9, device=device) * 4)
    s, z = random_qparams(9, qmin, qmax, device)
    assert torch.equal(ops.fake_quant(xs, s, z, qmin, qmax, axis=1),
                       _native_per_channel(xs.contiguous(), s, z, 1, qmin, qmax))


def test_fake_quant_tiny_scale(device):
    qmin, qmax = 0, 255
    x = torch.randn(64, device=device) * 1e-6
    scale = torch.tensor([1e-8], device=device)
    zp = torch.tensor([128], dtype=torch.int32, device=device)
    assert torch.equal(ops.fake_quant(x, scale, zp, qmin, qmax), _native_per_tensor(x, scale, zp, qmin, qmax))


def _lsq_case(shape, axis, dtype, device, bits, signed):
    qmin, qmax = quant_range(bits, signed)
    channels = 1 if axis is None else shape[axis]
    scale, zp = random_qparams(channels, qmin, qmax, device)
    # a fractional zero point exercises the rounding inside the op
    zp_float = zp.float() + torch.rand(channels, device=device) * 0.8 - 0.4
    x = _inputs(shape, dtype, device)
    dy = torch.randn(shape, device=device).to(dtype)
    return qmin, qmax, scale, zp_float, x, dy


def _grads(fn, x, scale, zp, dy):
    x = x.detach().clone().requires_grad_()
    scale = scale.detach().clone().requires_grad_()
    zp = zp.detach().clone().requires_grad_()
    y = fn(x, scale, zp)
    return (y, *torch.autograd.grad(y, (x, scale, zp), dy))


def _sum_tolerance(dy, qmin, qmax, grad_factor):
    # fp32 summation error bound of the native op's reduction: eps * sum of |terms|
    return 2e-6 * float(dy.float().abs().sum()) * max(qmax - qmin, 1) * grad_factor + 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("shape,axis", [((1,), None), ((7,), None), ((1025,), None), ((3, 5, 7), None),
                                        ((6, 5), 0), ((6, 5), 1), ((2, 3, 4, 5), 0), ((2, 3, 4, 5), 1),
                                        ((2, 3, 4, 5), 3), ((4, 1, 3, 3), 0)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits,signed", [(2, False), (4, True), (8, False)])
def test_lsq_matches_native(shape, axis, dtype, bits, signed, device):
    qmin, qmax, scale, zp, x, dy = _lsq_case(shape, axis, dtype, device, bits, signed)
    gf = 0.37
    ours = _grads(lambda a, s, z: ops.lsq_fake_quant(a, s, z, qmin, qmax, axis=axis, grad_factor=gf),
                  x, scale, zp, dy)
    if axis is None:
        def native_fn(a, s, z):
            return torch._fake_quantize_learnable_per_tensor_affine(a, s, z, qmin, qmax, gf)
    else:
        def native_fn(a, s, z):
            return torch._fake_quantize_learnable_per_channel_affine(a, s, z, axis, qmin, qmax, gf)
    # PyTorch's learnable backward only takes fp32: for half/bfloat16 its gradients are taken on
    # the widened inputs (which is exactly what a half kernel must compute) and its forward on x.
    _, dx_n, dscale_n, dzp_n = _grads(native_fn, x.float(), scale, zp, dy.float())
    y_n = native_fn(x, scale, zp)
    y, dx, dscale, dzp = ours
    assert y.dtype == dtype and torch.equal(y, y_n)
    assert torch.equal(dx, dx_n.to(dx.dtype))
    assert dscale.shape == scale.shape and dzp.shape == zp.shape
    tol = _sum_tolerance(dy, qmin, qmax, gf)
    torch.testing.assert_close(dscale, dscale_n.reshape(scale.shape), rtol=0, atol=tol)
    torch.testing.assert_close(dzp, dzp_n.reshape(zp.shape).float(), rtol=0, atol=tol)


def test_lsq_scale_gradient_is_consistent_with_forward_at_ties(device):
    # x/s exactly k + 0.5 with an odd zero point: dscale must be sum(dy * (y - x) / s)
    qmin, qmax = 0, 15
    scale = torch.tensor([0.25], device=device, requires_grad=True)
    zp = torch.tensor([3.0], device=device, requires_grad=True)
    x = (torch.arange(0, 8, device=device) + 0.5) * 0.25
    y = ops.lsq_fake_quant(x, scale, zp, qmin, qmax)
    (dscale,) = torch.autograd.grad(y.sum(), scale)
    expected = ((y.detach() - x) / 0.25).sum()
    torch.testing.assert_close(dscale, expected.reshape(1))


def test_lsq_zero_point_rounded_and_clamped(device):
    x = torch.linspace(-2, 2, 50, device=device)
    scale = torch.tensor([0.1], device=device)
    y = ops.lsq_fake_quant(x, scale, torch.tensor([20.6], device=device), 0, 15)
    expected = ops.fake_quant(x, scale, torch.tensor([15.0], device=device), 0, 15)
    assert torch.equal(y, expected)


def test_lsq_no_grad_for_frozen_zero_point(device):
    x = torch.randn(10, device=device, requires_grad=True)
    scale = torch.tensor([0.1], device=device, requires_grad=True)
    zp = torch.tensor([3.0], device=device)
    y = ops.lsq_fake_quant(x, scale, zp, 0, 15)
    y.sum().backward()
    assert x.grad is not None and scale.grad is not None and zp.grad is None


@pytest.mark.parametrize("op", ["fake_quant", "lsq_fake_quant"])
def test_bad_arguments(op, device):
    fn = getattr(ops, op)
    x = torch.randn(4, 3, device=device)
    s = torch.tensor([0.1], device=device)
    z = torch.tensor([0.0], device=device)
    with pytest.raises(TypeError, match="x must have dtype"):
        fn(x.to(torch.int32), s, z, 0, 15)
    with pytest.raises(ValueError, match="quant_min must be < quant_max"):
        fn(x, s, z, 15, 15)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        fn(x.cpu(), torch.tensor([0.0]), z.cpu(), 0, 15)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        fn(x.cpu(), torch.tensor([-1.0]), z.cpu(), 0, 15)
    with pytest.raises(ValueError, match=r"scale must have shape \[3\]"):
        fn(x, torch.full((4,), 0.1, device=device), torch.zeros(4, device=device), 0, 15, axis=1)
    with pytest.raises(ValueError, match="exactly one element"):
        fn(x, torch.full((3,), 0.1, device=device), z, 0, 15)
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        fn(x, s, z, 0, 15, axis=2)
    with pytest.raises(ValueError, match="zero_point must have the shape of scale"):
        fn(x, torch.full((3,), 0.1, device=device), torch.zeros(2, device=device), 0, 15, axis=1)
    with pytest.raises(TypeError, match="quant_max must be an int"):
        fn(x, s, z, 0, 15.0)


def test_python_scalars_accepted():
    x = torch.randn(10)
    y = ops.fake_quant(x, 0.1, 3, 0, 15)
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, 0.1, 3, 0, 15))
