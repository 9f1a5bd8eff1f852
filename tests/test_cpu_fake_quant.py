"""The C++ CPU kernels of the fused fake-quant ops (zsq_engine._C, backend 'cpu') against the
pure-PyTorch reference primitives (zsq_engine.ops.reference), called directly and through the
dispatcher.

Tolerances: every elementwise output of the fake-quant family (y, dx) must be bit-identical
(torch.equal). Per-channel sums (LSQ dscale / dzero_point, AdaRound dscale) are fp32 roundings
of fp64 sums taken in another order, so they may differ by about one fp32 ulp of the result
plus the fp64 summation error, which is bounded by a multiple of 2^-53 times the sum of |terms|:
``_sum_tol`` allows 2^-22 |ref| + 2^-40 sum|terms|. AdaRound's soft forward and backward go
through a sigmoid whose exp may differ from torch's (Sleef) by an ulp; they get ulp-sized
tolerances and a check that the pass/zero masks are identical. The scale search accumulates
its errors in fp64 where the reference uses an fp32 mean, so on near-ties (candidate errors
within fp32 noise) the two can pick different candidates: the test checks that the kernel's
choice is one of the candidates and within 1e-6 of the best error, and equals the reference
wherever the reference's winner is clear.
"""
import itertools

import numpy as np
import pytest
import torch

from zsq_engine import ops
from zsq_engine._ext import extension_status, get_extension
from zsq_engine.ops.adaround import reference as RA
from zsq_engine.ops.fake_quant import reference as RF
from zsq_engine.ops.fake_quant import reference as RQ
from zsq_engine.ops.scale_search import reference as RS

_C = get_extension()
_FUNCTIONS = ("fq_forward_cpu", "fq_backward_cpu", "lsq_backward_cpu", "qdrop_fq_forward_cpu",
              "qdrop_fq_backward_cpu", "qdrop_lsq_backward_cpu", "adaround_forward_cpu",
              "adaround_backward_cpu", "adaround_reg_forward_cpu", "adaround_reg_backward_cpu",
              "scale_search_cpu")
if _C is None:
    pytest.skip(f"native extension zsq_engine._C not built: {extension_status()['error']} "
                "(build with `pip install -e . --no-build-isolation`)", allow_module_level=True)
_missing = [name for name in _FUNCTIONS if not hasattr(_C, name)]
if _missing:
    pytest.skip(f"zsq_engine._C lacks the fake-quant CPU kernels {_missing} (stale build? rebuild with "
                "`pip install -e . --no-build-isolation`)", allow_module_level=True)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BITS_SIGNED = list(itertools.product([2, 3, 4, 8], [True, False]))
EPS32 = 2.0 ** -23


def _qrange(bits, signed):
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def _view(ndim, axis):
    shape = [1] * ndim
    if axis is not None:
        shape[axis] = -1
    return shape


def _qparams(channels, qmin, qmax, gen, scale_lo=0.01, scale_hi=0.21):
    scale = torch.rand(channels, generator=gen) * (scale_hi - scale_lo) + scale_lo
    zp = torch.randint(qmin, qmax + 1, (channels,), generator=gen).float()
    return scale, zp


def _special_values(scale, zp, qmin, qmax, axis, shape, dtype):
    """x with exact rounding ties, clamp boundaries, -0.0, huge values, scattered over x."""
    gen = torch.Generator().manual_seed(1)
    ndim = len(shape)
    s = scale.reshape(_view(ndim, axis)).expand(shape).reshape(-1)
    z = zp.reshape(_view(ndim, axis)).expand(shape).reshape(-1)
    n = s.numel()
    k = torch.randint(qmin - 3, qmax + 3, (n,), generator=gen).float() - z
    kind = torch.randint(0, 8, (n,), generator=gen)
    x = torch.randn(n, generator=gen) * s * (qmax - qmin) * 0.7
    x = torch.where(kind == 0, (k + 0.5) * s, x)            # ties of x/s (exact for power-of-2 scales)
    x = torch.where(kind == 1, (qmin - z) * s, x)           # lower clamp boundary
    x = torch.where(kind == 2, (qmax - z) * s, x)           # upper clamp boundary
    x = torch.where(kind == 3, (qmax - z + 0.5) * s, x)     # tie just above the range
    x = torch.where(kind == 4, (qmin - z - 0.5) * s, x)     # tie just below the range
    x = torch.where(kind == 5, torch.full_like(x, -0.0), x)
    x = torch.where(kind == 6, torch.sign(x) * 1e30, x) if dtype != torch.float16 else x
    return x.reshape(shape).to(dtype)


def _lsq_term_bound(dy, x, scale, zp, qmin, qmax, axis, gf):
    """Per channel: (sum of |dscale terms|, sum of |dzero_point terms|) of the LSQ backward, fp64."""
    ndim = x.dim()
    s = scale.float().reshape(_view(ndim, axis))
    z = zp.float().reshape(_view(ndim, axis))
    x32 = x.float()
    q = torch.round(x32 * torch.reciprocal(s)) + z
    inside = (q >= qmin) & (q <= qmax)
    y = ((q.clamp(qmin, qmax) - z) * s).double()
    g = dy.double().abs() * abs(gf)
    gap = torch.where(q < qmin, (qmin - z).abs(), (qmax - z).abs()).double()
    term_s = torch.where(inside, g * (y - x32.double()).abs() / s.double(), g * gap)
    term_z = torch.where(inside, torch.zeros_like(g), g * s.double())
    if axis is None:
        return term_s.sum().reshape(1), term_z.sum().reshape(1)
    dims = [d for d in range(ndim) if d != axis]
    return (term_s.sum(dims), term_z.sum(dims)) if dims else (term_s, term_z)


def _sum_tol(ref, bound):
    return 2.0 ** -22 * ref.double().abs() + 2.0 ** -40 * bound + 1e-30


def _assert_sums_close(got, ref, bound, what):
    assert got.dtype == torch.float32 and got.shape == ref.shape, what
    diff = (got.double() - ref.double()).abs().reshape(-1)
    tol = _sum_tol(ref, bound).reshape(-1)
    assert bool((diff <= tol).all()), f"{what}: max excess {float((diff - tol).max())}"


def _check_fake_quant_family(x, scale, zp, qmin, qmax, axis, gf=0.37, qdrop=None):
    """All six primitives of the family on one input, against the reference."""
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(x.dtype)
    zp_lsq = zp.clamp(qmin, qmax)
    y = _C.fq_forward_cpu(x, scale, zp, qmin, qmax, axis)
    assert y.dtype == x.dtype and torch.equal(y, RF.fq_forward(x, scale, zp, qmin, qmax, axis))
    dx = _C.fq_backward_cpu(dy, x, scale, zp, qmin, qmax, axis)
    assert torch.equal(dx, RF.fq_backward(dy, x, scale, zp, qmin, qmax, axis))
    got = _C.lsq_backward_cpu(dy, x, scale, zp_lsq, qmin, qmax, axis, gf)
    ref = RF.lsq_backward(dy, x, scale, zp_lsq, qmin, qmax, axis, gf)
    assert torch.equal(got[0], ref[0])
    bound_s, bound_z = _lsq_term_bound(dy, x, scale, zp_lsq, qmin, qmax, axis, gf)
    _assert_sums_close(got[1], ref[1], bound_s, "dscale")
    _assert_sums_close(got[2], ref[2], bound_z, "dzero_point")
    if qdrop is None:
        return
    p, seed, offset = qdrop
    y = _C.qdrop_fq_forward_cpu(x, scale, zp, qmin, qmax, axis, p, seed, offset)
    assert torch.equal(y, RQ.qdrop_fq_forward(x, scale, zp, qmin, qmax, axis, p, seed, offset))
    dx = _C.qdrop_fq_backward_cpu(dy, x, scale, zp, qmin, qmax, axis, p, seed, offset)
    assert torch.equal(dx, RQ.qdrop_fq_backward(dy, x, scale, zp, qmin, qmax, axis, p, seed, offset))
    got = _C.qdrop_lsq_backward_cpu(dy, x, scale, zp_lsq, qmin, qmax, axis, gf, p, seed, offset)
    ref = RQ.qdrop_lsq_backward(dy, x, scale, zp_lsq, qmin, qmax, axis, gf, p, seed, offset)
    assert torch.equal(got[0], ref[0])
    _assert_sums_close(got[1], ref[1], bound_s, "qdrop dscale")
    _assert_sums_close(got[2], ref[2], bound_z, "qdrop dzero_point")


# --------------------------------------------------------------------------- fake-quant family

SHAPE_AXES = [((1,), None), ((7,), None), ((123,), None), ((1025,), None), ((7,), 0), ((1025,), 0),
              ((3, 5, 4, 7), None), ((3, 5, 4, 7), 0), ((3, 5, 4, 7), 1), ((3, 5, 4, 7), 2),
              ((3, 5, 4, 7), 3), ((2, 1, 3), 1)]


@pytest.mark.slow
@pytest.mark.parametrize("shape,axis", SHAPE_AXES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fake_quant_family_matches_reference(shape, axis, dtype):
    gen = torch.Generator().manual_seed(hash((shape, axis)) % 1000)
    channels = 1 if axis is None else shape[axis]
    for bits, signed in BITS_SIGNED:
        qmin, qmax = _qrange(bits, signed)
        scale, zp = _qparams(channels, qmin, qmax, gen)
        x = (torch.randn(shape, generator=gen) * scale.max() * (qmax - qmin)).to(dtype)
        _check_fake_quant_family(x, scale, zp, qmin, qmax, axis, qdrop=(0.5, bits, 3))
        # exact ties and boundaries need power-of-two scales: x / s is then exact
        scale2 = 2.0 ** torch.randint(-6, -1, (channels,), generator=gen).float()
        _check_fake_quant_family(_special_values(scale2, zp, qmin, qmax, axis, shape, dtype), scale2, zp,
                                 qmin, qmax, axis, qdrop=(0.3, 2 ** 40 + bits, 2 ** 32 - 5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_point_outside_range_and_fractional_grad_factor(dtype):
    # fake_quant does not clamp its zero point: q can sit outside the range from the start
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 33, generator=gen) * 3).to(dtype)
    scale = torch.rand(33, generator=gen) * 0.1 + 0.02
    zp = torch.randint(-20, 40, (33,), generator=gen).float()
    _check_fake_quant_family(x, scale, zp, 0, 15, 1, gf=1.0 / 3.0, qdrop=(0.75, 5, 0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiny_scales_huge_values_and_signed_zero(dtype):
    qmin, qmax = -128, 127
    big = 1e30 if dtype != torch.float16 else 6e4
    x = torch.tensor([0.0, -0.0, 1e-9, -1e-9, 3e-8, -3e-8, 1e-6, -1e-6, big, -big, 5e-9, -5e-9]).to(dtype)
    for scale_value in (1e-8, 3e-8, 0.1):
        scale = torch.tensor([scale_value])
        for zp_value in (0.0, 5.0, -3.0):
            zp = torch.tensor([zp_value])
            _check_fake_quant_family(x, scale, zp, qmin, qmax, None, qdrop=(0.5, 1, 0))
    # -0.0 must come out bit-exact (torch.equal does not see the sign of zero)
    y = _C.fq_forward_cpu(x, torch.tensor([0.1]), torch.tensor([0.0]), qmin, qmax, None)
    y_ref = RF.fq_forward(x, torch.tensor([0.1]), torch.tensor([0.0]), qmin, qmax, None)
    assert torch.equal(torch.signbit(y), torch.signbit(y_ref))


def test_nan_and_inf_propagate_like_the_reference():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, -2.0, float("nan")])
    dy = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0, 6.0])
    s, z = torch.tensor([0.25]), torch.tensor([3.0])
    same = dict(rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(_C.fq_forward_cpu(x, s, z, 0, 15, None), RF.fq_forward(x, s, z, 0, 15, None), **same)
    torch.testing.assert_close(_C.fq_backward_cpu(dy, x, s, z, 0, 15, None),
                               RF.fq_backward(dy, x, s, z, 0, 15, None), **same)
    got = _C.lsq_backward_cpu(dy, x, s, z, 0, 15, None, 1.0)
    ref = RF.lsq_backward(dy, x, s, z, 0, 15, None, 1.0)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, **same)


def test_half_output_rounds_like_the_reference():
    # The reference rounds the fp64 product (q - zp) * s to fp16 through fp32 (torch's
    # double -> half cast), i.e. from the fp32 product. Find products where that differs
    # from one direct rounding and check the kernel follows the reference there too.
    gen = torch.Generator().manual_seed(4)
    scale = torch.rand(400_000, generator=gen) * 0.3 + 0.01
    k = torch.randint(-120, 120, (400_000,), generator=gen).float()
    exact = k.double() * scale.double()
    direct = torch.from_numpy(exact.numpy().astype(np.float16))
    via_fp32 = exact.float().half()
    pick = (direct != via_fp32).nonzero().flatten()
    assert pick.numel() > 0
    x = (k[pick] * scale[pick]).half().reshape(1, -1)
    s, z = scale[pick], torch.zeros(pick.numel())
    y = _C.fq_forward_cpu(x, s, z, -128, 127, 1)
    assert torch.equal(y, RF.fq_forward(x, s, z, -128, 127, 1))
    assert torch.equal(y.reshape(-1), via_fp32[pick])


@pytest.mark.slow
@pytest.mark.parametrize("shape,axis,dtype", [((300_001,), None, torch.float32), ((600, 500), 0, torch.bfloat16),
                                               ((500, 600), 1, torch.float32), ((100, 30, 101), 1, torch.float16)])
def test_multithreaded_path_and_thread_count_independence(shape, axis, dtype):
    gen = torch.Generator().manual_seed(5)
    qmin, qmax = 0, 15
    channels = 1 if axis is None else shape[axis]
    scale, zp = _qparams(channels, qmin, qmax, gen)
    x = (torch.randn(shape, generator=gen) * 2).to(dtype)
    _check_fake_quant_family(x, scale, zp, qmin, qmax, axis, qdrop=(0.5, 9, 2 ** 32 - 100_000))
    dy = torch.randn(shape, generator=gen).to(dtype)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_C.lsq_backward_cpu(dy, x, scale, zp, qmin, qmax, axis, 0.01))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0][0], results[1][0])
    bound_s, bound_z = _lsq_term_bound(dy, x, scale, zp, qmin, qmax, axis, 0.01)
    _assert_sums_close(results[0][1], results[1][1], bound_s, "dscale 1 vs 2 threads")
    _assert_sums_close(results[0][2], results[1][2], bound_z, "dzero_point 1 vs 2 threads")


def test_qdrop_mask_is_the_reference_rng():
    # p = 1 quantizes everything, p = 0 nothing; in between the kept set is uniform(seed, i + offset) < p
    x = torch.randn(5000) * 2
    s, z = torch.tensor([0.1]), torch.tensor([3.0])
    fq = _C.fq_forward_cpu(x, s, z, 0, 15, None)
    assert torch.equal(_C.qdrop_fq_forward_cpu(x, s, z, 0, 15, None, 1.0, 7, 0), fq)
    assert torch.equal(_C.qdrop_fq_forward_cpu(x, s, z, 0, 15, None, 0.0, 7, 0), x)
    from zsq_engine.ops.reference.rng import uniform
    for seed, offset, p in [(7, 0, 0.5), (2 ** 33 + 1, 2 ** 32 - 17, 0.25), (0, 123, 0.9)]:
        keep = uniform(seed, x.numel(), offset) < p
        y = _C.qdrop_fq_forward_cpu(x, s, z, 0, 15, None, p, seed, offset)
        assert torch.equal(y, torch.where(keep, fq, x))


# --------------------------------------------------------------------------- AdaRound

def _adaround_case(shape, axis, dtype, qmin, qmax, gen):
    channels = 1 if axis is None else shape[axis]
    scale = torch.rand(channels, generator=gen) * 0.1 + 0.02
    zp = torch.randint(qmin, qmax + 1, (channels,), generator=gen).float()
    w = torch.randn(shape, generator=gen) * scale.reshape(_view(len(shape), axis)) * (qmax - qmin) * 0.5
    w_floor, alpha = RA.adaround_init(w, scale, axis)
    alpha = alpha + torch.randn(shape, generator=gen) * 2  # spread beyond the clamp of h
    alpha.view(-1)[: min(8, alpha.numel())] = torch.tensor([0.0, -0.0, 30.0, -30.0, 2.4, -2.4, 1e4, -1e4]
                                                             )[: min(8, alpha.numel())]
    return w_floor.to(dtype), alpha.to(dtype), scale, zp


@pytest.mark.parametrize("shape,axis", [((123,), None), ((16, 3, 3, 3), 0), ((7, 5), 1), ((4, 6, 5), 2),
                                        ((256, 300), 0)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_adaround_matches_reference(shape, axis, dtype):
    gen = torch.Generator().manual_seed(6)
    for qmin, qmax in [(0, 15), (-8, 7), (0, 3)]:
        w_floor, alpha, scale, zp = _adaround_case(shape, axis, dtype, qmin, qmax, gen)
        hard = _C.adaround_forward_cpu(w_floor, alpha, scale, zp, qmin, qmax, axis, True)
        assert torch.equal(hard, RA.adaround_fake_quant(w_floor, alpha, scale, zp, qmin, qmax, axis, True))
        soft = _C.adaround_forward_cpu(w_floor, alpha, scale, zp, qmin, qmax, axis, False)
        ref = RA.adaround_fake_quant(w_floor, alpha, scale, zp, qmin, qmax, axis, False)
        assert soft.dtype == ref.dtype == dtype
        # an ulp of the sigmoid may move h by an ulp of the storage type: error <= 2 ulp(v) * s
        ulp = torch.finfo(dtype).eps
        atol = 2 * ulp * (qmax - qmin + float(zp.abs().max())) * float(scale.max())
        torch.testing.assert_close(soft.float(), ref.float(), rtol=2 * ulp, atol=atol)
        assert float((soft != ref).float().mean()) < 0.01

        dy = torch.randn(shape, generator=gen).to(dtype)
        dalpha, dscale = _C.adaround_backward_cpu(dy, w_floor, alpha, scale, zp, qmin, qmax, axis)
        ref_dalpha, ref_dscale = RA.adaround_backward(dy, w_floor, alpha, scale, zp, qmin, qmax, axis)
        assert dalpha.dtype == dtype and dscale.dtype == torch.float32
        assert torch.equal(dalpha == 0, ref_dalpha == 0)  # same live mask
        # sig * (1 - sig) with sig <= 11/12 on live elements: an ulp of sig costs up to 12 ulp
        torch.testing.assert_close(dalpha.float(), ref_dalpha.float(), rtol=16 * ulp, atol=1e-30)
        # per-element dscale terms |dy| * |clamp(v) - zp| <= |dy| * (qmax - qmin + |zp|)
        per = dy.double().abs() * (qmax - qmin + zp.abs().max().double())
        bound = per.sum() if axis is None else per.sum([d for d in range(len(shape)) if d != axis])
        # terms themselves can differ by the sigmoid's ulp through clamp(v): allow 8 eps32 of them
        diff = (dscale.double() - ref_dscale.double().reshape(dscale.shape)).abs()
        assert bool((diff <= _sum_tol(ref_dscale.reshape(dscale.shape), bound) + 8 * EPS32 * bound).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [20.0, 7.5, 2.0, 1.0, 0.5])
def test_adaround_regularizer_matches_reference(dtype, beta):
    gen = torch.Generator().manual_seed(7)
    alpha = (torch.randn(70_001, generator=gen) * 3).to(dtype)  # takes the threaded path
    alpha[:6] = torch.tensor([0.0, 1e4, -1e4, 2.3978952727983707, -2.3978952727983707, 0.5]).to(dtype)
    reg = _C.adaround_reg_forward_cpu(alpha, beta)
    ref = RA.adaround_reg_forward(alpha, beta)
    assert reg.dtype == torch.float32 and reg.dim() == 0
    # fp64 sums of terms in [0, 1] rounded to fp32: one ulp of the result
    torch.testing.assert_close(reg, ref, rtol=2 * EPS32, atol=0)
    grad_out = torch.tensor(0.7)
    dalpha = _C.adaround_reg_backward_cpu(grad_out, alpha, beta)
    ref_dalpha = RA.adaround_reg_backward(grad_out, alpha, beta)
    assert dalpha.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(dalpha.float(), ref_dalpha.float(), rtol=eps, atol=1e-30)


# --------------------------------------------------------------------------- scale search

def _candidate_errors(x2d, qmin, qmax, n, p, symmetric):
    """[C, n] fp64 errors of every candidate (fp32 fake-quant, fp64 |d|^p mean) and their qparams."""
    lo, hi = x2d.amin(1), x2d.amax(1)
    errs, scales, zps = [], [], []
    for i in range(n):
        ratio = 1.0 - 0.01 * i
        s, z = RS.minmax_qparams(lo * ratio, hi * ratio, qmin, qmax, symmetric)
        d = (x2d - RS._fake_quant_rows(x2d, s, z, qmin, qmax)).abs().double()
        errs.append(d.pow(p).mean(1))
        scales.append(s)
        zps.append(z)
    return torch.stack(errs, 1), torch.stack(scales, 1), torch.stack(zps, 1)


def _check_search(x, qmin, qmax, axis, n, p, symmetric):
    scale, zp = _C.scale_search_cpu(x, qmin, qmax, axis, n, p, symmetric)
    ref_scale, ref_zp = RS.scale_search(x, qmin, qmax, axis, n, p, symmetric)
    channels = 1 if axis is None else x.shape[axis]
    assert scale.shape == zp.shape == (channels,) and scale.dtype == zp.dtype == torch.float32
    xf = x.float()
    x2d = xf.reshape(1, -1) if axis is None else xf.movedim(axis, 0).reshape(channels, -1)
    errs, cand_s, cand_z = _candidate_errors(x2d, qmin, qmax, n, p, symmetric)
    best = errs.min(1).values
    for c in range(channels):
        match = ((cand_s[c] == scale[c]) & (cand_z[c] == zp[c])).nonzero().flatten()
        assert match.numel() > 0, f"channel {c}: ({scale[c]}, {zp[c]}) is not a candidate"
        assert float(errs[c, match].min()) <= float(best[c]) * (1 + 1e-6) + 1e-30, f"channel {c}"
        # where one set of qparams is clearly best (every other candidate at least 1e-4 worse),
        # both must pick it
        near = errs[c] <= best[c] * (1 + 1e-4) + 1e-30
        if bool((cand_s[c][near] == cand_s[c][near][0]).all() and (cand_z[c][near] == cand_z[c][near][0]).all()):
            assert scale[c] == ref_scale[c] and zp[c] == ref_zp[c], f"channel {c}"


SEARCH_SETTINGS = [(2.4, False, 4, False), (2.0, True, 8, True), (1.0, False, 2, False), (3.0, True, 4, False),
                   (0.5, False, 3, True)]


@pytest.mark.slow
@pytest.mark.parametrize("shape,axis", [((33,), None), ((5, 3, 3, 3), 0), ((4, 7, 6), 1), ((6, 40), 1),
                                        ((1, 123), 0)])
@pytest.mark.parametrize("p,symmetric,bits,signed", SEARCH_SETTINGS)
def test_scale_search_matches_reference(shape, axis, p, symmetric, bits, signed):
    gen = torch.Generator().manual_seed(8)
    qmin, qmax = _qrange(bits, signed)
    x = torch.randn(shape, generator=gen) * torch.rand(shape, generator=gen) * 3
    _check_search(x, qmin, qmax, axis, 80, p, symmetric)


@pytest.mark.parametrize("shape,axis", [((2, 20_000), 0), ((40_000,), None), ((3, 2, 9000), 1)])
def test_scale_search_long_rows_threaded(shape, axis):
    # rows longer than one work chunk (16384 elements), several threads, strided rows
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(shape, generator=gen) * torch.rand(shape, generator=gen) * 3
    for p, symmetric, bits, signed in SEARCH_SETTINGS[:3]:
        _check_search(x, *_qrange(bits, signed), axis, 8, p, symmetric)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scale_search_low_precision_input(dtype):
    gen = torch.Generator().manual_seed(9)
    x = (torch.randn(8, 2, 3, 3, generator=gen) * 2).to(dtype)
    _check_search(x, 0, 15, 0, 100, 2.4, False)
    _check_search(x, -8, 7, 1, 50, 2.0, True)


def test_scale_search_degenerate_channels():
    x = torch.randn(5, 64)
    x[1] = 0.0                     # all-zero: scale clamps to eps, every error is 0 -> first candidate
    x[2] = 3.5                     # constant positive
    x[3, 7] = float("nan")         # NaN: no finite error, the reference answers (1, 0)
    x[4, :] = torch.linspace(-1, 1, 64)
    for symmetric in (False, True):
        scale, zp = _C.scale_search_cpu(x, 0, 15, 0, 80, 2.4, symmetric)
        ref_scale, ref_zp = RS.scale_search(x, 0, 15, 0, 80, 2.4, symmetric)
        assert torch.equal(scale, ref_scale) and torch.equal(zp, ref_zp)
    assert float(scale[3]) == 1.0 and float(zp[3]) == 0.0


# --------------------------------------------------------------------------- dispatcher

def _grads(fn, tensors, dy):
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    y = fn(*tensors)
    return (y, *torch.autograd.grad(y, tensors, dy))


def _both_backends(fn, tensors, dy):
    with ops.use_backend("cpu", strict=True):
        ours = _grads(fn, tensors, dy)
    with ops.use_backend("reference"):
        ref = _grads(fn, tensors, dy)
    return ours, ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [None, 0, 1, 3])
def test_public_ops_through_dispatcher(dtype, axis):
    gen = torch.Generator().manual_seed(10)
    shape = (3, 4, 5, 6)
    channels = 1 if axis is None else shape[axis]
    qmin, qmax = -8, 7
    x = (torch.randn(shape, generator=gen) * 0.8).to(dtype)
    dy = torch.randn(shape, generator=gen).to(dtype)
    scale = torch.rand(channels, generator=gen) * 0.1 + 0.05
    zp = torch.rand(channels, generator=gen) * 6 - 3  # fractional: the op rounds (and clamps) it
    gf = 0.21

    ours, ref = _both_backends(lambda a: ops.fake_quant(a, scale, zp, qmin, qmax, axis), [x], dy)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])

    def lsq(a, s, z):
        return ops.lsq_fake_quant(a, s, z, qmin, qmax, axis, gf)

    def qdrop(a, s, z):
        return ops.qdrop_fake_quant(a, s, z, qmin, qmax, axis, p=0.5, seed=3, offset=11, learnable=True,
                                    grad_factor=gf)

    for fn in (lsq, qdrop):
        ours, ref = _both_backends(fn, [x, scale, zp], dy)
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
        bound_s, bound_z = _lsq_term_bound(dy, x, scale, zp.round().clamp(qmin, qmax), qmin, qmax, axis, gf)
        _assert_sums_close(ours[2], ref[2], bound_s, "dscale")
        _assert_sums_close(ours[3], ref[3], bound_z, "dzero_point")

    with ops.use_backend("cpu", strict=True):
        y = ops.qdrop_fake_quant(x, scale, zp, qmin, qmax, axis, p=0.5, seed=3, learnable=False)
    with ops.use_backend("reference"):
        assert torch.equal(y, ops.qdrop_fake_quant(x, scale, zp, qmin, qmax, axis, p=0.5, seed=3, learnable=False))
    # the search itself is checked against the reference above; here: the op reaches the kernel
    with ops.use_backend("cpu", strict=True):
        s_cpu, z_cpu = ops.scale_search(x, 0, 15, axis, 40, 2.4)
    s_direct, z_direct = _C.scale_search_cpu(x, 0, 15, axis, 40, 2.4, False)
    assert torch.equal(s_cpu, s_direct) and torch.equal(z_cpu, z_direct)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adaround_through_dispatcher(dtype):
    gen = torch.Generator().manual_seed(11)
    w_floor, alpha, scale, zp = _adaround_case((6, 3, 3, 3), 0, dtype, 0, 15, gen)
    dy = torch.randn(w_floor.shape, generator=gen).to(dtype)

    def soft(a, s):
        return ops.adaround_fake_quant(w_floor, a, s, zp, 0, 15, axis=0, hard=False)

    ours, ref = _both_backends(soft, [alpha, scale], dy)
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(ours[0].float(), ref[0].float(), rtol=2 * ulp, atol=2 * ulp * 16 * float(scale.max()))
    torch.testing.assert_close(ours[1].float(), ref[1].float(), rtol=8 * ulp, atol=1e-30)
    # dscale: sums of dy * (clamp(v) - zp), v computed in fp32; an ulp of h moves a term by
    # |dy| ulp32(v), so allow 4 eps32 |dy| (16 + |zp|) per term on top of the summation error
    per = dy.double().abs() * (16 + zp.abs().max().double())
    bound = per.sum([1, 2, 3])
    diff = (ours[2].double() - ref[2].double()).abs()
    assert bool((diff <= _sum_tol(ref[2], bound) + 4 * EPS32 * bound).all())

    def hard(a, s):
        return ops.adaround_fake_quant(w_floor, a, s, zp, 0, 15, axis=0, hard=True)

    with ops.use_backend("cpu", strict=True):
        y = hard(alpha, scale)
    with ops.use_backend("reference"):
        assert torch.equal(y, hard(alpha, scale))

    ours, ref = _both_backends(lambda a: ops.adaround_regularizer(a, 3.0), [alpha], torch.tensor(1.3))
    torch.testing.assert_close(ours[0], ref[0], rtol=2 * EPS32, atol=0)
    torch.testing.assert_close(ours[1].float(), ref[1].float(), rtol=ulp, atol=1e-30)


def test_mixed_dtype_adaround_falls_back_to_reference():
    # fp32 weights with fp16 logits: the reference's type promotion defines the result
    w_floor = torch.randint(-4, 4, (4, 5)).float()
    alpha = torch.randn(4, 5).half()
    scale, zp = torch.full((4,), 0.1), torch.zeros(4)
    with ops.use_backend("cpu", strict=True):
        y = ops.adaround_fake_quant(w_floor, alpha, scale, zp, -8, 7, axis=0)
    with ops.use_backend("reference"):
        assert torch.equal(y, ops.adaround_fake_quant(w_floor, alpha, scale, zp, -8, 7, axis=0))


def test_cpu_backend_is_chosen_for_cpu_tensors_and_float64_falls_back():
    from zsq_engine.ops import dispatch as D
    for primitive in ("fq_forward", "fq_backward", "lsq_backward", "qdrop_fq_forward", "qdrop_fq_backward",
                      "qdrop_lsq_backward", "adaround_forward", "adaround_backward", "adaround_reg_forward",
                      "adaround_reg_backward", "scale_search"):
        assert D.select(primitive, torch.device("cpu"))[0] == "cpu", primitive
    # float64 is outside the kernels' dtypes: the registered primitive hands it to the reference
    x = torch.randn(3, 5, dtype=torch.float64)
    s, z = torch.full((5,), 0.1), torch.zeros(5)
    fq = D.get_impl("fq_forward", "cpu")
    assert torch.equal(fq(x, s, z, -8, 7, 1), RF.fq_forward(x, s, z, -8, 7, 1))
    got = D.get_impl("scale_search", "cpu")(x, 0, 15, 1, 10, 2.4, False)
    ref = RS.scale_search(x, 0, 15, 1, 10, 2.4, False)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def _opcheck_cases():
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(2, 3, 5, 4, generator=gen, requires_grad=True)
    s1 = (torch.rand(1, generator=gen) * 0.1 + 0.05).requires_grad_()
    z1 = torch.randint(0, 16, (1,), generator=gen).float().requires_grad_()
    s3 = (torch.rand(3, generator=gen) * 0.1 + 0.05).requires_grad_()
    z3 = torch.randint(0, 16, (3,), generator=gen).float().requires_grad_()
    dy = torch.randn(2, 3, 5, 4, generator=gen)
    w_floor = torch.randint(-4, 4, (3, 2, 3, 3), generator=gen).float()
    alpha = torch.randn(3, 2, 3, 3, generator=gen, requires_grad=True)
    xd, sd3, zd3 = x.detach(), s3.detach(), z3.detach()
    z = torch.ops.zsq
    return [
        (z.fake_quant.default, (x, s1, z1, 0, 15, None)),
        (z.fake_quant.default, (x.half(), s3, z3, 0, 15, 1)),
        (z.fake_quant_backward.default, (dy, xd, sd3, zd3, -8, 7, 1)),
        (z.lsq_fake_quant.default, (x, s1, z1, 0, 15, None, 0.5)),
        (z.lsq_fake_quant.default, (x, s3, z3, -8, 7, 1, 1.0)),
        (z.lsq_fake_quant_backward.default, (dy, xd, sd3, zd3, 0, 15, 1, 0.3)),
        (z.qdrop_fake_quant.default, (x, s1, z1, 0, 15, None, 0.5, 3, 0, True, 1.0)),
        (z.qdrop_fake_quant.default, (x, s3, z3, 0, 15, 1, 0.5, 3, 7, False, 1.0)),
        (z.qdrop_fake_quant_backward.default, (dy, xd, sd3, zd3, 0, 15, 1, 0.5, 3, 7, False)),
        (z.qdrop_lsq_fake_quant_backward.default, (dy, xd, sd3, zd3, 0, 15, 1, 0.2, 0.5, 3, 7)),
        (z.adaround_fake_quant.default, (w_floor, alpha, s3, zd3, 0, 15, 0, False)),
        (z.adaround_fake_quant.default, (w_floor, alpha, s3, zd3, 0, 15, 0, True)),
        (z.adaround_fake_quant_backward.default, (torch.randn(3, 2, 3, 3), w_floor, alpha.detach(), sd3, zd3,
                                                  0, 15, 0)),
        (z.adaround_regularizer.default, (alpha, 2.0)),
        (z.adaround_regularizer_backward.default, (torch.tensor(1.5), alpha.detach(), 7.0)),
        (z.scale_search.default, (xd, 0, 15, 1, 20, 2.4, False)),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(16))
def test_opcheck_with_cpu_backend_forced(index):
    op, args = _opcheck_cases()[index]
    with ops.use_backend("cpu", strict=True):
        torch.library.opcheck(op, args)


# --------------------------------------------------------------------------- bad arguments

def test_bad_arguments_name_the_argument():
    x = torch.randn(4, 3)
    s, z = torch.full((3,), 0.1), torch.zeros(3)
    s1, z1 = torch.tensor([0.1]), torch.tensor([0.0])
    cases = [
        (lambda: _C.fq_forward_cpu(x.int(), s1, z1, 0, 15, None), "x must be float32, float16 or bfloat16"),
        (lambda: _C.fq_forward_cpu(x.t(), s1, z1, 0, 15, None), "x must be contiguous"),
        (lambda: _C.fq_forward_cpu(x, s1, z1, 15, 15, None), "quant_min must be < quant_max"),
        (lambda: _C.fq_forward_cpu(x, s1, z1, 0, 2 ** 31, None), "quant_max must fit in int32"),
        (lambda: _C.fq_forward_cpu(x, s, z, 0, 15, None), "scale must have exactly one element"),
        (lambda: _C.fq_forward_cpu(x, s, z, 0, 15, 0), r"scale must have shape \[4\]"),
        (lambda: _C.fq_forward_cpu(x, s, z.double(), 0, 15, 1), "zero_point must be float32"),
        (lambda: _C.fq_forward_cpu(x, s, z[:2], 0, 15, 1), r"zero_point must have shape \[3\]"),
        (lambda: _C.fq_forward_cpu(x, s, z, 0, 15, 2), "axis=2 is out of range"),
        (lambda: _C.fq_backward_cpu(x[:2], x, s, z, 0, 15, 1), "dy must have the shape of x"),
        (lambda: _C.lsq_backward_cpu(x.half(), x, s, z, 0, 15, 1, 1.0), "dy must have the dtype of x"),
        (lambda: _C.qdrop_fq_forward_cpu(x, s, z, 0, 15, 1, 1.5, 0, 0), "p must be a probability"),
        (lambda: _C.adaround_forward_cpu(x, x.half(), s, z, 0, 15, 1, False),
         "alpha must have the dtype of w_floor"),
        (lambda: _C.adaround_backward_cpu(x, x, x[:, :2], s, z, 0, 15, 1), "alpha must have the shape of w_floor"),
        (lambda: _C.adaround_reg_forward_cpu(x, 0.0), "beta must be a positive"),
        (lambda: _C.adaround_reg_backward_cpu(torch.ones(2), x, 2.0), "grad_out must be a one-element float32"),
        (lambda: _C.scale_search_cpu(x, 0, 15, 0, 0, 2.4, False), "num_candidates must be in"),
        (lambda: _C.scale_search_cpu(x, 0, 15, 0, 10, -1.0, False), "p must be a positive"),
        (lambda: _C.scale_search_cpu(torch.empty(0), 0, 15, None, 10, 2.4, False), "x must not be empty"),
    ]
    for fn, message in cases:
        with pytest.raises(RuntimeError, match=message):
            fn()
    # a negative axis means the same channel axis
    assert torch.equal(_C.fq_forward_cpu(x, s, z, 0, 15, -1), _C.fq_forward_cpu(x, s, z, 0, 15, 1))
