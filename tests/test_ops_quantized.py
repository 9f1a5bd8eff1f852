"""zsq_engine.ops.qgemm / qconv2d_nhwc on every backend that implements them, against float64
arithmetic written out here (not the library's own reference helpers)."""
import pytest
import torch
import torch.nn.functional as F

from _support.devices import DEVICES
from zsq_engine import ops
from zsq_engine.ops import dispatch
from zsq_engine.opspec.epilogue import Epilogue

FP32_BUDGET = 8 * 2.0 ** -24  # relative, see zsq_engine.opspec.epilogue


def backends_for(op):
    impls = dispatch.implementations(op)
    return [b for b in ops.available_backends() if b in impls]


def cases(op):
    return [(b, d) for b in backends_for(op) for d in DEVICES
            if not (b in ("cpu",) and d == "cuda") and not (b in ("cuda",) and d == "cpu")]


def rand_q(shape, dtype, device, lo=None, hi=None):
    lo = (-128 if dtype == torch.int8 else 0) if lo is None else lo
    hi = (127 if dtype == torch.int8 else 255) if hi is None else hi
    return torch.randint(lo, hi + 1, shape, device=device).to(dtype)


def expected_gemm(a, w, za=0, zw=None, sa=None, sw=None, bias=None, act="none"):
    ad = a.double() - za
    wd = w.double() - (0 if zw is None else zw.double().reshape(-1, 1))
    acc = ad @ wd.t()
    if sa is None:
        return acc
    v = acc * sa.double().reshape(-1, 1) * sw.double().reshape(1, -1)
    if bias is not None:
        v = v + bias.double()
    if act == "relu":
        v = v.clamp_min(0)
    return v


@pytest.mark.slow
@pytest.mark.parametrize("backend,device", cases("qgemm"))
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 13, 37), (33, 17, 130)])
def test_qgemm_int32_exact(backend, device, m, n, k):
    a, w = rand_q((m, k), torch.int8, device), rand_q((n, k), torch.int8, device)
    with ops.use_backend(backend, strict=True):
        out = ops.qgemm(a, w)
    assert out.dtype == torch.int32
    assert torch.equal(out, expected_gemm(a, w).to(torch.int32))


@pytest.mark.parametrize("backend,device", cases("qgemm"))
@pytest.mark.parametrize("fmt", ["w8a8", "w4a8", "w4a4", "w4a4u"])
def test_qgemm_packed_formats_exact(backend, device, fmt):
    m, n, k = 9, 11, 67  # odd k: the last packed nibble is padding
    w = rand_q((n, k), torch.int8, device, -8, 7)
    w[0, 0], w[0, 1] = -8, 7
    if fmt == "w4a4u":
        a = rand_q((m, k), torch.uint8, device, 0, 15)
    else:
        a = rand_q((m, k), torch.int8, device, *((-8, 7) if fmt == "w4a4" else (-128, 127)))
    expect = expected_gemm(a, w).to(torch.int32)
    kwargs = {}
    wa, aa = w, a
    if fmt != "w8a8":
        wa, kwargs = ops.pack_int4(w), dict(w_packed=True, k=k)
    if fmt.startswith("w4a4"):
        aa = ops.pack_int4(a)
        kwargs.update(a_packed=True, a_signed=fmt == "w4a4")
    with ops.use_backend(backend, strict=True):
        out = ops.qgemm(aa, wa, **kwargs)
    assert torch.equal(out, expect)


@pytest.mark.parametrize("backend,device", cases("qgemm"))
def test_qgemm_epilogue_asymmetric(backend, device):
    m, n, k = 19, 24, 50
    a = rand_q((m, k), torch.uint8, device)
    w = rand_q((n, k), torch.int8, device)
    zw = torch.randint(-3, 4, (n,), device=device, dtype=torch.int32)
    sa = torch.tensor([0.031], device=device)
    sw = torch.rand(n, device=device) * 0.01 + 1e-3
    bias = torch.randn(n, device=device)
    ep = Epilogue(weight_scale=sw, act_scale=sa, act_zero_point=117, weight_zero_point=zw, bias=bias,
                  activation="relu", out_dtype=torch.float32)
    with ops.use_backend(backend, strict=True):
        out = ops.qgemm(a, w, ep)
    ref = expected_gemm(a, w, 117, zw, sa, sw, bias, "relu")
    tol = FP32_BUDGET * (ref.abs() + bias.double().abs() + 1e-30)
    assert ((out.double() - ref).abs() <= tol).all()


@pytest.mark.parametrize("backend,device", cases("qgemm"))
def test_qgemm_requantized_output(backend, device):
    m, n, k = 8, 16, 64
    a, w = rand_q((m, k), torch.int8, device), rand_q((n, k), torch.int8, device)
    # power-of-two scales: every float step is exact, so requantisation must match exactly
    ep = Epilogue(weight_scale=2.0 ** -7, act_scale=2.0 ** -6, out_dtype=torch.uint8, out_scale=2.0 ** -3,
                  out_zero_point=3)
    with ops.use_backend(backend, strict=True):
        out = ops.qgemm(a, w, ep)
    v = expected_gemm(a, w) * 2.0 ** -13 / 2.0 ** -3
    assert torch.equal(out, (torch.round(v) + 3).clamp(0, 255).to(torch.uint8))


def expected_conv(x, w, stride, padding, dilation, groups, pad_value):
    xd = F.pad(x.double().permute(0, 3, 1, 2), (padding, padding, padding, padding), value=float(pad_value))
    out = F.conv2d(xd, w.double().permute(0, 3, 1, 2), None, stride, 0, dilation, groups)
    return out.permute(0, 2, 3, 1)


@pytest.mark.slow
@pytest.mark.parametrize("backend,device", cases("qconv2d_nhwc"))
@pytest.mark.parametrize("ksize,stride,padding,dilation,groups,c,o", [
    (1, 1, 0, 1, 1, 5, 7), (3, 2, 1, 1, 1, 6, 4), (3, 1, 1, 1, 6, 6, 6), (5, 1, 2, 2, 1, 3, 2),
    (3, 1, 1, 1, 2, 4, 6),  # grouped, not depthwise
])
def test_qconv2d_int32_exact(backend, device, ksize, stride, padding, dilation, groups, c, o):
    x = rand_q((2, 9, 7, c), torch.uint8, device)
    w = rand_q((o, ksize, ksize, c // groups), torch.int8, device)
    with ops.use_backend(backend, strict=True):
        out = ops.qconv2d_nhwc(x, w, stride, padding, dilation, groups, pad_value=5)
    assert torch.equal(out, expected_conv(x, w, stride, padding, dilation, groups, 5).to(torch.int32))


@pytest.mark.slow
@pytest.mark.parametrize("backend,device", cases("qconv2d_nhwc"))
def test_qconv2d_residual_relu6(backend, device):
    x = rand_q((1, 6, 6, 8), torch.int8, device)
    w = rand_q((8, 3, 3, 8), torch.int8, device)
    residual = torch.randn(1, 6, 6, 8, device=device)
    sw = torch.rand(8, device=device) * 0.002
    ep = Epilogue(weight_scale=sw, act_scale=0.02, residual=residual, activation="relu6")
    with ops.use_backend(backend, strict=True):
        out = ops.qconv2d_nhwc(x, w, 1, 1, epilogue=ep)
    acc = expected_conv(x, w, 1, 1, 1, 1, 0)
    ref = (acc * torch.tensor(0.02, dtype=torch.float32).double() * sw.double() + residual.double()).clamp(0, 6)
    tol = FP32_BUDGET * ((acc * 0.02 * sw.double()).abs() + residual.double().abs()) + 1e-30
    assert ((out.double() - ref).abs() <= tol).all()


def test_bad_arguments_name_the_argument():
    a, w = torch.zeros(4, 8, dtype=torch.int8), torch.zeros(3, 8, dtype=torch.int8)
    with pytest.raises(TypeError, match="w"):
        ops.qgemm(a, w.float())
    with pytest.raises(ValueError, match="same K"):
        ops.qgemm(a, torch.zeros(3, 9, dtype=torch.int8))
    with pytest.raises(ValueError, match="k must be"):
        ops.qgemm(a, ops.pack_int4(w), w_packed=True)
    with pytest.raises(ValueError, match="weight_scale"):
        ops.qgemm(a, w, Epilogue(weight_scale=torch.ones(5), act_scale=1.0))
    with pytest.raises(ValueError, match="pad_value"):
        ops.qconv2d_nhwc(torch.zeros(1, 4, 4, 2, dtype=torch.uint8), torch.zeros(2, 3, 3, 2, dtype=torch.int8),
                         pad_value=-1)
    with pytest.raises(ValueError, match="groups"):
        ops.qconv2d_nhwc(torch.zeros(1, 4, 4, 3, dtype=torch.int8), torch.zeros(2, 3, 3, 2, dtype=torch.int8))
