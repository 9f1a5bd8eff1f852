"""Triton AdaRound and Lp scale-search kernels against the reference primitives.

AdaRound tolerances: the kernels compute in fp32 like the reference, but Triton's sigmoid
(1/(1+exp(-x))), exp2 and log2 are not torch's implementations, so values differ in the last
bits: soft weights / gradients are compared with ``allclose`` at a few fp32 ulps relative to the
scale of the quantity (looser on CUDA, whose exp/log are the fast approximate instructions);
the hard weights involve no transcendental and must be bit-identical. Per-channel sums get
the fp32 summation budget.

Scale search: the chosen (scale, zero point) must be the reference's wherever the best
candidate is unambiguous (its error beats the runner-up by more than 1e-4 relative), and the
chosen candidate's error must always be within 1e-5 relative of the reference's best.
"""
import pytest

pytest.importorskip("triton")

import torch  # noqa: E402

from _support.numerics import non_contiguous, quant_range  # noqa: E402
from zsq_engine.kernels import _common as cm  # noqa: E402
from zsq_engine.kernels import adaround as KA  # noqa: E402
from zsq_engine.kernels import scale_search as KS  # noqa: E402
from zsq_engine.ops.adaround import reference as RA  # noqa: E402
from zsq_engine.ops.scale_search import reference as RS  # noqa: E402

DEVICES = (["cpu"] if cm.INTERPRET else []) + (["cuda"] if torch.cuda.is_available() else [])
if not DEVICES:
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

pytestmark = pytest.mark.interpreter  # the Triton kernels, interpreted on a machine without a GPU

SUM_RTOL = 2e-5


@pytest.fixture(params=DEVICES)
def dev(request):
    return torch.device(request.param)


def _rtol(dev):
    # interpreter: numpy exp/log (a few ulps); CUDA: ex2.approx / lg2.approx
    return 1e-6 if dev.type == "cpu" else 2e-5


def _ids(shape_axis):
    shape, axis = shape_axis
    return "x".join(map(str, shape)) + f"-ax{axis}"


def _channel_sum(t, axis):
    if axis is None:
        return t.double().sum().reshape(1)
    dims = [d for d in range(t.dim()) if d != axis]
    return t.double().sum(dims) if dims else t.double()


def _adaround_data(shape, axis, qmin, qmax, dev, dtype=torch.float32):
    channels = 1 if axis is None else shape[axis]
    w = torch.randn(shape) * 0.5
    scale = torch.rand(channels) * 0.1 + 0.05
    zp = torch.randint(qmin, qmax + 1, (channels,)).float()
    w_floor, alpha = RA.adaround_init(w, scale, axis)
    alpha = alpha + 0.5 * torch.randn(shape)
    alpha.view(-1)[::7] = 0.0  # sigmoid(0) = 1/2 exactly
    alpha.view(-1)[3::11] = 40.0  # saturated: h clamps to 1, no gradient
    return (w_floor.to(dtype).to(dev), alpha.to(dtype).to(dev), scale.to(dev), zp.to(dev),
            torch.randn(shape).to(dtype).to(dev))


ADA_SHAPES = [((6, 3, 3, 3), 0), ((5, 7), 1), ((33,), None), ((4, 130), 0), ((2, 3, 4, 5), 2), ((40, 3), 1)]


# ----------------------------------------------------------------------------- AdaRound

@pytest.mark.slow
@pytest.mark.parametrize("bits,signed", [(4, False), (2, True), (8, False)])
@pytest.mark.parametrize("shape_axis", ADA_SHAPES, ids=_ids)
def test_adaround_forward(dev, shape_axis, bits, signed):
    shape, axis = shape_axis
    qmin, qmax = quant_range(bits, signed)
    wf, alpha, scale, zp, _ = _adaround_data(shape, axis, qmin, qmax, dev)
    hard = KA.adaround_forward(wf, alpha, scale, zp, qmin, qmax, axis, True)
    assert torch.equal(hard, RA.adaround_fake_quant(wf, alpha, scale, zp, qmin, qmax, axis, hard=True))
    soft = KA.adaround_forward(wf, alpha, scale, zp, qmin, qmax, axis, False)
    ref = RA.adaround_fake_quant(wf, alpha, scale, zp, qmin, qmax, axis, hard=False)
    assert soft.dtype == ref.dtype and soft.shape == ref.shape
    # |W| <= (qmax - qmin) * max(scale): relative error of the sigmoid times that
    atol = _rtol(dev) * 4 * (qmax - qmin) * float(scale.max())
    torch.testing.assert_close(soft, ref, rtol=0, atol=atol)


@pytest.mark.parametrize("shape_axis", ADA_SHAPES, ids=_ids)
def test_adaround_backward(dev, shape_axis):
    shape, axis = shape_axis
    qmin, qmax = 0, 15
    wf, alpha, scale, zp, dy = _adaround_data(shape, axis, qmin, qmax, dev)
    dalpha, dscale = KA.adaround_backward(dy, wf, alpha, scale, zp, qmin, qmax, axis)
    rdalpha, rdscale = RA.adaround_backward(dy, wf, alpha, scale, zp, qmin, qmax, axis)
    assert dalpha.dtype == rdalpha.dtype and dscale.dtype == torch.float32 and dscale.shape == rdscale.shape
    torch.testing.assert_close(dalpha, rdalpha, rtol=4 * _rtol(dev), atol=1e-9)
    assert bool(((dalpha == 0) == (rdalpha == 0)).all())  # same live mask
    bound = _channel_sum(dy.abs() * (qmax - qmin), axis)  # |clamp(v) - zp| <= qmax - qmin
    tol = SUM_RTOL * bound.cpu() + 1e-12
    assert bool(((dscale.double().reshape(-1).cpu() - rdscale.double().reshape(-1).cpu()).abs() <= tol).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_adaround_low_precision(dev, dtype):
    shape, axis = (8, 2, 3, 3), 0
    wf, alpha, scale, zp, dy = _adaround_data(shape, axis, 0, 15, dev, dtype)
    hard = KA.adaround_forward(wf, alpha, scale, zp, 0, 15, axis, True)
    assert torch.equal(hard, RA.adaround_fake_quant(wf, alpha, scale, zp, 0, 15, axis, hard=True))
    # the reference rounds every intermediate to dtype, the kernel only the result
    soft = KA.adaround_forward(wf, alpha, scale, zp, 0, 15, axis, False)
    ref = RA.adaround_fake_quant(wf, alpha, scale, zp, 0, 15, axis, hard=False)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(soft.float(), ref.float(), rtol=0, atol=4 * eps * 16 * float(scale.max()))
    dalpha, _ = KA.adaround_backward(dy, wf, alpha, scale, zp, 0, 15, axis)
    rdalpha, _ = RA.adaround_backward(dy, wf, alpha, scale, zp, 0, 15, axis)
    assert dalpha.dtype == dtype
    torch.testing.assert_close(dalpha.float(), rdalpha.float(), rtol=2 * eps, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("beta", [20.0, 2.0, 3.7, 1.0, 0.0])
@pytest.mark.parametrize("shape", [(7,), (6, 3, 3, 3), (1025,)], ids=str)
def test_adaround_regularizer(dev, shape, beta):
    _, alpha, _, _, _ = _adaround_data(shape, None, 0, 15, dev)
    alpha.view(-1)[1] = -40.0  # h clamps to 0
    grad_out = torch.tensor(0.7, device=dev)
    a = alpha.detach().clone().requires_grad_(True)
    ref = RA.adaround_regularizer(a, beta)
    ref.backward(grad_out)
    loss = KA.adaround_reg_forward(alpha, beta)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    # per-element |loss| <= 1: fp32 summation budget plus the pow approximation
    atol = (SUM_RTOL + 4 * _rtol(dev) * beta) * alpha.numel()
    torch.testing.assert_close(loss, ref.detach().float(), rtol=0, atol=atol)
    dalpha = KA.adaround_reg_backward(grad_out, alpha, beta)
    assert dalpha.dtype == alpha.dtype
    scale_of = float(a.grad.abs().max()) + 1e-6
    torch.testing.assert_close(dalpha, a.grad, rtol=0, atol=(1 + beta) * 8 * _rtol(dev) * scale_of)


def test_adaround_non_contiguous_and_one_element_scale(dev):
    wf, alpha, scale, zp, dy = _adaround_data((6, 10), 0, 0, 15, dev)
    wf_nc, alpha_nc, dy_nc = non_contiguous(wf), non_contiguous(alpha), non_contiguous(dy)
    assert torch.equal(KA.adaround_forward(wf_nc, alpha_nc, scale, zp, 0, 15, 0, True),
                       RA.adaround_fake_quant(wf, alpha, scale, zp, 0, 15, 0, hard=True))
    d1 = KA.adaround_backward(dy_nc, wf_nc, alpha_nc, scale, zp, 0, 15, 0)
    d2 = KA.adaround_backward(dy, wf, alpha, scale, zp, 0, 15, 0)
    assert torch.equal(d1[0], d2[0]) and torch.equal(d1[1], d2[1])
    s1, z1 = scale[:1].clone(), zp[:1].clone()
    assert torch.equal(KA.adaround_forward(wf, alpha, s1, z1, 0, 15, 0, True),
                       RA.adaround_fake_quant(wf, alpha, s1, z1, 0, 15, None, hard=True))
    _, ds = KA.adaround_backward(dy, wf, alpha, s1, z1, 0, 15, None)
    _, rds = RA.adaround_backward(dy, wf, alpha, s1, z1, 0, 15, None)
    assert ds.shape == rds.shape == s1.shape
    torch.testing.assert_close(ds, rds, rtol=1e-5, atol=1e-5)


def test_adaround_bad_arguments(dev):
    wf, alpha, scale, zp, dy = _adaround_data((4, 5), 0, 0, 15, dev)
    with pytest.raises(ValueError, match="alpha must have the shape of w_floor"):
        KA.adaround_forward(wf, alpha[:2], scale, zp, 0, 15, 0)
    with pytest.raises(ValueError, match="scale must have 4 elements"):
        KA.adaround_forward(wf, alpha, scale[:3], zp[:3], 0, 15, 0)
    with pytest.raises(ValueError, match="grad_out must have one element"):
        KA.adaround_reg_backward(torch.ones(2, device=dev), alpha, 2.0)
    with pytest.raises(TypeError, match="beta must be a python float"):
        KA.adaround_reg_forward(alpha, torch.tensor(2.0))


# ----------------------------------------------------------------------------- scale search

def _candidate_errors(x, qmin, qmax, axis, n, p, symmetric):
    """Reference errors of every candidate, [C, n] (fp64 of the reference's fp32 values)."""
    x2d = x.float().reshape(1, -1) if axis is None else x.float().movedim(axis, 0).reshape(x.shape[axis], -1)
    xmin, xmax = x2d.amin(1), x2d.amax(1)
    errs, params = [], []
    for i in range(n):
        r = 1.0 - 0.01 * i
        s, z = RS.minmax_qparams(xmin * r, xmax * r, qmin, qmax, symmetric)
        q = torch.clamp(torch.round(x2d * torch.reciprocal(s)[:, None]) + z[:, None], qmin, qmax)
        errs.append((x2d - (q - z[:, None]) * s[:, None]).abs().pow(p).mean(1))
        params.append((s, z))
    return torch.stack(errs, 1).double(), params


def _check_search(x, qmin, qmax, axis, n, p, symmetric, dev):
    scale, zp = KS.scale_search(x.to(dev), qmin, qmax, axis, n, p, symmetric)
    ref_scale, ref_zp = RS.scale_search(x, qmin, qmax, axis, n, p, symmetric)
    channels = 1 if axis is None else x.shape[axis]
    assert scale.shape == zp.shape == (channels,) and scale.dtype == zp.dtype == torch.float32
    errs, params = _candidate_errors(x, qmin, qmax, axis, n, p, symmetric)
    scale, zp = scale.cpu(), zp.cpu()
    best = errs.min(1).values
    sorted_errs = errs.sort(1).values
    if n > 1:
        clear = (sorted_errs[:, 1] - sorted_errs[:, 0]) > 1e-4 * sorted_errs[:, 0]
    else:
        clear = torch.ones_like(best, dtype=torch.bool)
    assert torch.equal(scale[clear], ref_scale[clear]) and torch.equal(zp[clear], ref_zp[clear])
    # whichever candidate was chosen, its reference error is within 1e-5 of the best
    for c in range(channels):
        chosen = [i for i in range(n) if params[i][0][c] == scale[c] and params[i][1][c] == zp[c]]
        assert chosen, f"channel {c}: chosen (scale, zp) is not a candidate"
        assert float(errs[c, chosen].min()) <= float(best[c]) * (1 + 1e-5) + 1e-30
    return clear


@pytest.mark.slow
@pytest.mark.parametrize("shape_axis", [((5, 3, 3, 3), 0), ((4, 7), 1), ((1, 123), 0), ((33,), None),
                                        ((3, 6, 5, 5), 1), ((2, 3, 12), 2), ((1025,), None)], ids=_ids)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_scale_search_asymmetric(dev, shape_axis, bits):
    shape, axis = shape_axis
    x = torch.randn(shape) * torch.rand(shape) * 3  # heavy-ish tails: clipping pays off
    clear = _check_search(x, 0, 2 ** bits - 1, axis, 80, 2.4, False, dev)
    assert bool(clear.any())


@pytest.mark.slow
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("p", [2.0, 2.4, 3.0])
def test_scale_search_symmetric_and_other_p(dev, signed, p):
    x = torch.randn(4, 300) * torch.rand(4, 300) * 2
    qmin, qmax = quant_range(4, signed)
    _check_search(x, qmin, qmax, 0, 37, p, True, dev)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_scale_search_low_precision_input(dev, dtype):
    x = (torch.randn(3, 2, 50) * 2).to(dtype)
    _check_search(x, 0, 15, 1, 100, 2.4, False, dev)


@pytest.mark.slow
def test_scale_search_split_slices(dev, monkeypatch):
    # many slices per channel: partial errors of one channel come from several programs
    monkeypatch.setattr(cm, "INTERPRETER_PROGRAMS", 16)
    monkeypatch.setattr(cm, "PROGRAMS_PER_SM", 64)
    monkeypatch.setattr(KS, "MIN_SLICE", 128)
    x = torch.randn(2, 1000) * torch.rand(2, 1000) * 3
    _check_search(x, 0, 15, 0, 80, 2.4, False, dev)
    _check_search(non_contiguous(x), 0, 15, 0, 20, 2.4, False, dev)


@pytest.mark.slow
def test_scale_search_outliers_and_degenerate_channels(dev):
    x = torch.randn(4, 1024)
    x[:, 0] = 40.0  # one outlier per channel: the best 4-bit range clips it
    x[3] = 0.0  # all-zero channel: every candidate has error 0, the first one wins
    scale, zp = KS.scale_search(x.to(dev), 0, 15, 0)
    ref_scale, ref_zp = RS.scale_search(x, 0, 15, 0)
    assert torch.equal(scale.cpu(), ref_scale) and torch.equal(zp.cpu(), ref_zp)
    minmax_scale, _ = RS.minmax_qparams(x.amin(1), x.amax(1), 0, 15)
    assert bool((scale[:3].cpu() < 0.9 * minmax_scale[:3]).all())


def test_scale_search_bad_arguments(dev):
    with pytest.raises(ValueError, match="num_candidates"):
        KS.scale_search(torch.randn(3, 3, device=dev), 0, 15, num_candidates=0)
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        KS.scale_search(torch.randn(3, 3, device=dev), 0, 15, axis=2)
    with pytest.raises(ValueError, match="must not be empty"):
        KS.scale_search(torch.randn(0, device=dev), 0, 15, axis=None)
