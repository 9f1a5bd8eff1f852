"""Triton fake-quant / LSQ / QDrop kernels against the reference primitives.

y and dx must be bit-identical (torch.equal). The dscale / dzero_point sums are fp32 in the
kernels and fp64 in the reference: they are compared within an fp32 summation error budget,
``SUM_RTOL * sum(|terms|)`` per channel, with ``sum(|terms|)`` bounded from the data
(|y - x| / s <= 1/2 inside the range). On CPU the kernels run through the Triton interpreter,
so shapes stay small.
"""
import pytest

pytest.importorskip("triton")

import torch  # noqa: E402

from _support.numerics import non_contiguous, quant_range  # noqa: E402
from zsq_engine.kernels import _common as cm  # noqa: E402
from zsq_engine.kernels import fake_quant as K  # noqa: E402
from zsq_engine.kernels import rng as krng  # noqa: E402
from zsq_engine.ops.fake_quant import reference as R  # noqa: E402
from zsq_engine.ops.fake_quant import reference as RQ  # noqa: E402
from zsq_engine.ops.reference import rng as rrng  # noqa: E402

DEVICES = (["cpu"] if cm.INTERPRET else []) + (["cuda"] if torch.cuda.is_available() else [])
if not DEVICES:
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

pytestmark = pytest.mark.interpreter  # the Triton kernels, interpreted on a machine without a GPU

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# fp32 accumulation of a few hundred tiles per lane + tree reductions: a few hundred unit
# roundoffs (2^-24) of the absolute sum is a generous but still meaningful bound.
SUM_RTOL = 2e-5

SHAPES = [  # (shape, axis)
    ((1,), None), ((7,), None), ((123,), 0), ((1025,), None),
    ((3, 4, 5, 6), None), ((3, 4, 5, 6), 0), ((3, 4, 5, 6), 1), ((3, 4, 5, 6), 2), ((3, 4, 5, 6), 3),
    ((9, 130), 0), ((40, 7), 1),
]
BIT_CONFIGS = [(2, True), (3, False), (4, True), (8, False)]


@pytest.fixture(params=DEVICES)
def dev(request):
    return torch.device(request.param)


def _ids(shape_axis):
    shape, axis = shape_axis
    return "x".join(map(str, shape)) + f"-ax{axis}"


def _qparams(shape, axis, qmin, qmax, dev, gen=None):
    channels = 1 if axis is None else shape[axis]
    scale = torch.rand(channels, generator=gen) * 0.2 + 0.01
    zp = torch.randint(qmin, qmax + 1, (channels,), generator=gen).float()
    return scale.to(dev), zp.to(dev)


def _data(shape, dtype, dev, spread=4.0):
    return (torch.randn(shape) * spread).to(dtype).to(dev), torch.randn(shape).to(dtype).to(dev)


def _channel_sum(t, axis):
    if axis is None:
        return t.double().sum().reshape(1)
    dims = [d for d in range(t.dim()) if d != axis]
    return t.double().sum(dims) if dims else t.double()


def _lsq_bounds(dy, x, scale, zp, qmin, qmax, axis, grad_factor):
    """Per-channel upper bounds of sum |dscale terms| and sum |dzp terms| (fp64)."""
    zp = torch.round(zp.float()).clamp(qmin, qmax)
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    s_b, z_b = scale.float().reshape(shape or [1]), zp.reshape(shape or [1])
    if x.dim() == 0:
        s_b, z_b = s_b.reshape(()), z_b.reshape(())
    q = torch.round(x.float() * torch.reciprocal(s_b)) + z_b
    ady = dy.float().abs().double()
    below, above = q < qmin, q > qmax
    inside = ~(below | above)
    reach = torch.where(below, (qmin - z_b).abs(), (qmax - z_b).abs()).double()
    b_scale = torch.where(inside, 0.5 * ady, ady * reach) * abs(grad_factor)
    b_zp = torch.where(inside, torch.zeros_like(ady), ady * s_b.double()) * abs(grad_factor)
    return _channel_sum(b_scale, axis), _channel_sum(b_zp, axis)


def _assert_sums_close(got, ref, bound, what):
    got, ref = got.double().reshape(-1).cpu(), ref.double().reshape(-1).cpu()
    tol = SUM_RTOL * bound.reshape(-1).cpu() + 1e-30
    err = (got - ref).abs()
    assert bool((err <= tol).all()), f"{what}: max error {float((err - tol).max()):.3g} over the fp32 budget"


def _assert_lsq(out, ref, dy, x, scale, zp, qmin, qmax, axis, grad_factor):
    dx, dscale, dzp = out
    rdx, rdscale, rdzp = ref
    assert dx.dtype == rdx.dtype and torch.equal(dx, rdx)
    assert dscale.shape == rdscale.shape and dscale.dtype == rdscale.dtype
    assert dzp.shape == rdzp.shape and dzp.dtype == rdzp.dtype
    b_scale, b_zp = _lsq_bounds(dy, x, scale, zp, qmin, qmax, axis, grad_factor)
    _assert_sums_close(dscale, rdscale, b_scale, "dscale")
    _assert_sums_close(dzp, rdzp, b_zp, "dzero_point")


# ----------------------------------------------------------------------------- rng

@pytest.mark.parametrize("seed,offset,numel", [(0, 0, 1), (1234, 7, 1025), (2 ** 32 + 5, 2 ** 31 - 3, 300),
                                               (-3, 2 ** 32 - 100, 257), (99, -50, 64)])
def test_uniform_bit_identical(dev, seed, offset, numel):
    got = krng.uniform(seed, numel, offset, device=dev)
    assert torch.equal(got.cpu(), rrng.uniform(seed, numel, offset))


# ----------------------------------------------------------------------------- STE forward / backward

@pytest.mark.slow
@pytest.mark.parametrize("bits,signed", BIT_CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape_axis", SHAPES, ids=_ids)
def test_forward_backward_bit_identical(dev, shape_axis, dtype, bits, signed):
    shape, axis = shape_axis
    qmin, qmax = quant_range(bits, signed)
    scale, zp = _qparams(shape, axis, qmin, qmax, dev)
    x, dy = _data(shape, dtype, dev, spread=0.1 * (qmax - qmin) * 0.2)
    y = K.fq_forward(x, scale, zp, qmin, qmax, axis)
    ref = R.fq_forward(x, scale, zp, qmin, qmax, axis)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, ref)
    dx = K.fq_backward(dy, x, scale, zp, qmin, qmax, axis)
    assert dx.dtype == dtype
    assert torch.equal(dx, R.fq_backward(dy, x, scale, zp, qmin, qmax, axis))


@pytest.mark.slow
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_every_bit_width_with_lsq(dev, bits, signed):
    qmin, qmax = quant_range(bits, signed)
    shape, axis = (2, 5, 3, 7), 1
    scale, zp = _qparams(shape, axis, qmin, qmax, dev)
    x, dy = _data(shape, torch.float32, dev, spread=0.05 * (qmax - qmin))
    assert torch.equal(K.fq_forward(x, scale, zp, qmin, qmax, axis),
                       R.fq_forward(x, scale, zp, qmin, qmax, axis))
    assert torch.equal(K.fq_backward(dy, x, scale, zp, qmin, qmax, axis),
                       R.fq_backward(dy, x, scale, zp, qmin, qmax, axis))
    _assert_lsq(K.lsq_backward(dy, x, scale, zp, qmin, qmax, axis, 0.37),
                R.lsq_backward(dy, x, scale, zp, qmin, qmax, axis, 0.37), dy, x, scale, zp, qmin, qmax, axis, 0.37)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rounding_ties_and_clamp_boundaries(dev, dtype):
    # scale 2^-2: x * inv is exact, so x = (k + 1/2) / 4 lands exactly on a tie; half-even must
    # alternate. zp = 3, range [-8, 7]: q = k + 3 hits -8, 7 and one step beyond either side.
    qmin, qmax = -8, 7
    k = torch.arange(-14.0, 8.0)
    x = torch.cat([(k + 0.5) / 4, k / 4, (k + 0.25) / 4, (k + 0.75) / 4,
                   torch.tensor([(qmin - 3) / 4, (qmax - 3) / 4, (qmin - 3.5) / 4, (qmax - 2.5) / 4])])
    x = x.to(dtype).to(dev)
    assert torch.equal(x.float().cpu(), x.float().cpu().to(dtype).float())  # representable
    scale = torch.tensor([0.25], device=dev)
    zp = torch.tensor([3.0], device=dev)
    dy = torch.linspace(-2, 2, x.numel()).to(dtype).to(dev)
    y = K.fq_forward(x, scale, zp, qmin, qmax, None)
    ref = R.fq_forward(x, scale, zp, qmin, qmax, None)
    assert torch.equal(y, ref)
    assert y.float().min().item() == (qmin - 3) / 4 and y.float().max().item() == (qmax - 3) / 4
    assert torch.equal(K.fq_backward(dy, x, scale, zp, qmin, qmax, None),
                       R.fq_backward(dy, x, scale, zp, qmin, qmax, None))
    _assert_lsq(K.lsq_backward(dy, x, scale, zp, qmin, qmax, None, 1.0),
                R.lsq_backward(dy, x, scale, zp, qmin, qmax, None, 1.0), dy, x, scale, zp, qmin, qmax, None, 1.0)


def test_round_half_even_large_magnitudes(dev):
    # q = round(x) with scale 1 and an int32-sized range: halves between 2^21 and 2^24, where the
    # add-2^23 trick must stop, and values beyond 2^31 that must clamp to the right side.
    qmin, qmax = -(2 ** 31), 2 ** 31 - 1
    base = torch.tensor([2.0 ** e for e in range(20, 25)], dtype=torch.float64)
    offs = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.5])
    vals = (base[:, None] + offs[None, :]).reshape(-1)
    vals = torch.cat([vals, -vals, torch.tensor([3e9, -3e9, 1e38, -1e38, 0.5, -0.5, 1.5, -2.5])]).float()
    x = vals.to(dev)
    scale, zp = torch.ones(1, device=dev), torch.zeros(1, device=dev)
    y = K.fq_forward(x, scale, zp, qmin, qmax, None)
    assert torch.equal(y, R.fq_forward(x, scale, zp, qmin, qmax, None))
    assert not torch.isnan(y).any()
    assert torch.equal(y[:40].cpu(), torch.round(vals[:40]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tiny_scales_and_special_values(dev, dtype):
    qmin, qmax = 0, 255
    shape, axis = (3, 50), 0
    x = (torch.randn(shape) * 1e-6).to(dtype)
    x[0, :4] = torch.tensor([float("inf"), float("-inf"), 0.0, -0.0])
    x[1, :3] = torch.tensor([1e4, -1e4, 3e-8])
    x = x.to(dev)
    scale = torch.tensor([1e-8, 3e-8, 1e-7], device=dev)
    zp = torch.tensor([0.0, 128.0, 255.0], device=dev)
    dy = torch.randn(shape).to(dtype).to(dev)
    y = K.fq_forward(x, scale, zp, qmin, qmax, axis)
    assert torch.equal(y, R.fq_forward(x, scale, zp, qmin, qmax, axis))
    assert torch.equal(K.fq_backward(dy, x, scale, zp, qmin, qmax, axis),
                       R.fq_backward(dy, x, scale, zp, qmin, qmax, axis))
    out = K.lsq_backward(dy, x, scale, zp, qmin, qmax, axis, 0.5)
    ref = R.lsq_backward(dy, x, scale, zp, qmin, qmax, axis, 0.5)
    assert torch.equal(out[0], ref[0])
    # NaN propagates like torch.clamp
    xn = x.clone()
    xn[2, 5] = float("nan")
    torch.testing.assert_close(K.fq_forward(xn, scale, zp, qmin, qmax, axis),
                               R.fq_forward(xn, scale, zp, qmin, qmax, axis), rtol=0, atol=0, equal_nan=True)


def _double_rounding_cases(target: torch.dtype, want: int = 8):
    """(a, s): fp32 products a*s that land exactly on a midpoint of ``target`` although the exact
    product does not, so rounding the exact product once and rounding the fp32 product differ.
    The reference (through torch's fp64 -> fp16/bf16 conversion) rounds the fp32 product."""
    gen = torch.Generator().manual_seed(1)
    half_ulp_bits = 0x8000 if target == torch.bfloat16 else 0x1000
    low = 0xFFFF if target == torch.bfloat16 else 0x1FFF
    a_all, s_all = [], []
    for a in (3.0, 5.0, 7.0, -3.0):
        s = (torch.rand(2 ** 20, generator=gen) * 0.5 + 0.01).float()
        p32 = s * a
        exact = s.double() * a
        hit = ((p32.abs().view(torch.int32) & low) == half_ulp_bits) & (p32.double() != exact)
        s_all.append(s[hit][:want])
        a_all.append(torch.full_like(s[hit][:want], a))
    return torch.cat(a_all), torch.cat(s_all)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_output_rounding_matches_reference(dev, dtype):
    a, s = _double_rounding_cases(dtype)
    assert a.numel() >= 4
    # one channel per case: x = a * s (rounded to dtype) quantizes back to a
    x = (a * s).to(dtype)
    keep = torch.round(x.float() * torch.reciprocal(s)) == a
    a, s, x = a[keep], s[keep], x[keep]
    assert a.numel() >= 2
    zp = torch.zeros_like(s)
    y = K.fq_forward(x.to(dev), s.to(dev), zp.to(dev), -8, 7, 0)
    ref = R.fq_forward(x, s, zp, -8, 7, 0)
    assert torch.equal(y.cpu(), ref)


# ----------------------------------------------------------------------------- LSQ

@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape_axis", SHAPES, ids=_ids)
def test_lsq_backward(dev, shape_axis, dtype):
    shape, axis = shape_axis
    qmin, qmax = 0, 15
    scale, zp = _qparams(shape, axis, qmin, qmax, dev)
    zp = zp + 0.3  # the kernel rounds and clamps the zero point like the reference
    x, dy = _data(shape, dtype, dev, spread=1.5)
    gf = 1.0 / (x.numel() * qmax) ** 0.5
    _assert_lsq(K.lsq_backward(dy, x, scale, zp, qmin, qmax, axis, gf),
                R.lsq_backward(dy, x, scale, zp, qmin, qmax, axis, gf), dy, x, scale, zp, qmin, qmax, axis, gf)


def test_lsq_zero_point_outside_range_and_int_zero_point(dev):
    shape, axis = (4, 3, 5), 1
    x, dy = _data(shape, torch.float32, dev, spread=2.0)
    scale = torch.tensor([0.1, 0.2, 0.05], device=dev)
    zp = torch.tensor([-3, 7, 20], dtype=torch.int32, device=dev)  # clamped to [0, 15] in the op
    out = K.lsq_backward(dy, x, scale, zp, 0, 15, axis, 1.0)
    ref = R.lsq_backward(dy, x, scale, zp, 0, 15, axis, 1.0)
    assert out[2].dtype == torch.float32 and out[2].shape == zp.shape
    _assert_lsq(out, ref, dy, x, scale, zp, 0, 15, axis, 1.0)
    assert torch.equal(K.fq_forward(x, scale, zp, -8, 7, axis), R.fq_forward(x, scale, zp, -8, 7, axis))


def test_lsq_is_deterministic(dev):
    x, dy = _data((2, 8, 33), torch.float32, dev)
    scale, zp = _qparams((2, 8, 33), 1, 0, 15, dev)
    a = K.lsq_backward(dy, x, scale, zp, 0, 15, 1, 0.1)
    b = K.lsq_backward(dy, x, scale, zp, 0, 15, 1, 0.1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.slow
@pytest.mark.parametrize("shape_axis", [((300,), None), ((3, 4, 50), 1), ((2, 130), 0), ((40, 7), 1),
                                        ((5, 3, 2, 9), 2)], ids=_ids)
def test_small_tiles_force_multi_tile_and_split_paths(dev, monkeypatch, shape_axis):
    # Tiny tiles and many programs: every reduction program loops over several (n, j) tiles
    # and channels are split over several partials, on small inputs.
    monkeypatch.setattr(cm, "TILE", 32)
    monkeypatch.setattr(cm, "MIN_TILES", 1)
    monkeypatch.setattr(cm, "INTERPRETER_PROGRAMS", 12)
    monkeypatch.setattr(cm, "PROGRAMS_PER_SM", 1)
    shape, axis = shape_axis
    outer, channels, inner = cm.channel_dims(shape, axis)
    bn, bc, bj = cm.tile_shape(outer, channels, inner)
    split = cm.reduction_split(outer, channels, inner, bn, bc, bj, dev)
    assert bn * bc * bj <= 32 and (split[1] * split[3] > 1 or split[0] * split[2] > 1)
    x, dy = _data(shape, torch.bfloat16, dev, spread=1.0)
    scale, zp = _qparams(shape, axis, -8, 7, dev)
    assert torch.equal(K.fq_forward(x, scale, zp, -8, 7, axis), R.fq_forward(x, scale, zp, -8, 7, axis))
    _assert_lsq(K.lsq_backward(dy, x, scale, zp, -8, 7, axis, 0.2),
                R.lsq_backward(dy, x, scale, zp, -8, 7, axis, 0.2), dy, x, scale, zp, -8, 7, axis, 0.2)
    out = K.qdrop_lsq_backward(dy, x, scale, zp, -8, 7, axis, 0.2, 0.5, 11, 5)
    ref = RQ.qdrop_lsq_backward(dy, x, scale, zp, -8, 7, axis, 0.2, 0.5, 11, 5)
    _assert_lsq(out, ref, dy, x, scale, zp, -8, 7, axis, 0.2)


# ----------------------------------------------------------------------------- QDrop

QDROP_SHAPES = [((7,), None), ((1025,), None), ((3, 4, 5, 6), 1), ((3, 4, 5, 6), 3), ((9, 130), 0)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape_axis", QDROP_SHAPES, ids=_ids)
def test_qdrop_bit_identical(dev, shape_axis, dtype):
    shape, axis = shape_axis
    qmin, qmax = -8, 7
    scale, zp = _qparams(shape, axis, qmin, qmax, dev)
    x, dy = _data(shape, dtype, dev, spread=0.6)
    p, seed, offset = 0.3, 2024, 2 ** 32 - 17  # offset wraps mod 2^32 inside the tensor
    y = K.qdrop_fq_forward(x, scale, zp, qmin, qmax, axis, p, seed, offset)
    assert torch.equal(y, RQ.qdrop_fq_forward(x, scale, zp, qmin, qmax, axis, p, seed, offset))
    if x.numel() > 100:  # both branches present
        quantized = R.fq_forward(x, scale, zp, qmin, qmax, axis)
        assert bool((y == x).any()) and bool((y == quantized).any())
    dx = K.qdrop_fq_backward(dy, x, scale, zp, qmin, qmax, axis, p, seed, offset)
    assert torch.equal(dx, RQ.qdrop_fq_backward(dy, x, scale, zp, qmin, qmax, axis, p, seed, offset))
    out = K.qdrop_lsq_backward(dy, x, scale, zp, qmin, qmax, axis, 0.25, p, seed, offset)
    ref = RQ.qdrop_lsq_backward(dy, x, scale, zp, qmin, qmax, axis, 0.25, p, seed, offset)
    _assert_lsq(out, ref, dy, x, scale, zp, qmin, qmax, axis, 0.25)


@pytest.mark.parametrize("p", [0.0, 1.0, 0.5])
def test_qdrop_probability_edges(dev, p):
    shape, axis = (4, 64), 0
    scale, zp = _qparams(shape, axis, 0, 15, dev)
    x, dy = _data(shape, torch.float32, dev, spread=0.8)
    y = K.qdrop_fq_forward(x, scale, zp, 0, 15, axis, p, 7, 0)
    assert torch.equal(y, RQ.qdrop_fq_forward(x, scale, zp, 0, 15, axis, p, 7, 0))
    if p == 0.0:
        assert torch.equal(y, x)
    if p == 1.0:
        assert torch.equal(y, R.fq_forward(x, scale, zp, 0, 15, axis))
    # a different seed or offset gives a different mask
    if p == 0.5:
        y2 = K.qdrop_fq_forward(x, scale, zp, 0, 15, axis, p, 8, 0)
        y3 = K.qdrop_fq_forward(x, scale, zp, 0, 15, axis, p, 7, 1)
        assert not torch.equal(y, y2) and not torch.equal(y, y3)


# ----------------------------------------------------------------------------- layout / arguments

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_contiguous_inputs(dev, dtype):
    shape, axis = (3, 4, 11), 1
    scale, zp = _qparams(shape, axis, 0, 15, dev)
    x0, dy0 = _data(shape, dtype, dev, spread=1.0)
    x, dy = non_contiguous(x0), non_contiguous(dy0)
    assert not x.is_contiguous() and not dy.is_contiguous()
    assert torch.equal(K.fq_forward(x, scale, zp, 0, 15, axis), R.fq_forward(x0, scale, zp, 0, 15, axis))
    assert torch.equal(K.fq_backward(dy, x, scale, zp, 0, 15, axis),
                       R.fq_backward(dy0, x0, scale, zp, 0, 15, axis))
    _assert_lsq(K.lsq_backward(dy, x, scale, zp, 0, 15, axis, 0.5),
                R.lsq_backward(dy0, x0, scale, zp, 0, 15, axis, 0.5), dy0, x0, scale, zp, 0, 15, axis, 0.5)
    xt = x0.transpose(0, 2)  # permuted view, channel axis unchanged (1)
    assert torch.equal(K.qdrop_fq_forward(xt, scale, zp, 0, 15, 1, 0.5, 3, 0),
                       RQ.qdrop_fq_forward(xt.contiguous(), scale, zp, 0, 15, 1, 0.5, 3, 0))


def test_one_element_qparams_with_axis_and_empty_input(dev):
    x, dy = _data((3, 5), torch.float32, dev)
    scale, zp = torch.tensor([0.1], device=dev), torch.tensor([2.0], device=dev)
    # one-element parameters with an axis behave per-tensor
    assert torch.equal(K.fq_forward(x, scale, zp, 0, 15, 1), R.fq_forward(x, scale, zp, 0, 15, None))
    out = K.lsq_backward(dy, x, scale, zp, 0, 15, 1, 1.0)
    ref = R.lsq_backward(dy, x, scale, zp, 0, 15, None, 1.0)
    _assert_lsq(out, ref, dy, x, scale, zp, 0, 15, None, 1.0)
    empty = torch.empty(0, 4, device=dev)
    s4, z4 = torch.full((4,), 0.1, device=dev), torch.zeros(4, device=dev)
    assert K.fq_forward(empty, s4, z4, 0, 15, 1).shape == (0, 4)
    dx, ds, dz = K.lsq_backward(empty, empty, s4, z4, 0, 15, 1, 1.0)
    assert dx.shape == (0, 4) and torch.equal(ds, torch.zeros_like(s4)) and torch.equal(dz, torch.zeros_like(z4))


def test_bad_arguments(dev):
    x = torch.randn(4, 3, device=dev)
    s, z = torch.full((3,), 0.1, device=dev), torch.zeros(3, device=dev)
    with pytest.raises(TypeError, match="x must have dtype"):
        K.fq_forward(x.double(), s, z, 0, 15, 1)
    with pytest.raises(ValueError, match="scale must have 3 elements"):
        K.fq_forward(x, s[:2], z[:2], 0, 15, 1)
    with pytest.raises(ValueError, match="exactly one element"):
        K.fq_forward(x, s, z, 0, 15, None)
    with pytest.raises(ValueError, match="quant_min must be < quant_max"):
        K.fq_forward(x, s, z, 5, 5, 1)
    with pytest.raises(TypeError, match="quant_max must be an int"):
        K.fq_forward(x, s, z, 0, 15.0, 1)
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        K.fq_forward(x, s, z, 0, 15, 2)
    with pytest.raises(ValueError, match="dy must have the shape of x"):
        K.fq_backward(x[:2], x, s, z, 0, 15, 1)
    with pytest.raises(TypeError, match="seed must be a python int"):
        K.qdrop_fq_forward(x, s, z, 0, 15, 1, 0.5, 1.5, 0)
