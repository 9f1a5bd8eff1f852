"""Triton NHWC integer conv (implicit GEMM + depthwise) vs the exact reference conv2d_int and
the float64 epilogue reference. On CPU these run through the interpreter."""
import pytest
import torch

from _support.devices import DEVICES
from zsq_engine.ops import dispatch
from zsq_engine.ops.int_conv.reference import conv_product_reference
from zsq_engine.ops.int_gemm.reference import dequant_reference, finish_reference
from zsq_engine.opspec.epilogue import Epilogue
from zsq_engine.ops.int_conv.reference import conv2d_int

pytest.importorskip("triton")
ok, why = dispatch.backend_status("triton")
if not ok:
    pytest.skip(f"triton backend unavailable: {why}", allow_module_level=True)

from zsq_engine.kernels.int_conv import int8_conv2d_nhwc  # noqa: E402

# the Triton kernels, interpreted on a machine without a GPU; interpreted convs take seconds each
pytestmark = [pytest.mark.interpreter, pytest.mark.slow]

EPS32 = 2.0 ** -24


def rand(shape, dtype, device, lo=None, hi=None):
    lo = (-128 if dtype == torch.int8 else 0) if lo is None else lo
    hi = (128 if dtype == torch.int8 else 256) if hi is None else hi
    return torch.randint(lo, hi, shape, device=device).to(dtype)


def ref_conv(x, w, stride, padding, dilation, groups=1):
    return conv2d_int(x, w.permute(0, 3, 1, 2), stride, padding, dilation, groups, "NHWC")


CASES = [
    # (B, H, W, C, O, kh, kw, stride, padding, dilation)
    (2, 6, 7, 5, 9, 1, 1, 1, 0, 1),
    (1, 7, 6, 19, 11, 3, 3, 1, 1, 1),
    (1, 9, 9, 6, 7, 3, 3, 2, 1, 1),
    (1, 8, 9, 3, 5, 5, 5, 1, 2, 1),
    (1, 11, 10, 3, 8, 7, 7, 2, 3, 1),
    (1, 9, 10, 4, 6, 3, 3, 1, 2, 2),
    (1, 5, 8, 7, 3, 1, 3, (2, 1), (0, 1), (1, 2)),
]


def _kpair(case):
    return case


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES)
def test_conv_gemm_exact(case, device):
    b, h, w_, c, o, kh, kw, s, p, d = _kpair(case)
    x = rand((b, h, w_, c), torch.int8, device)
    w = rand((o, kh, kw, c), torch.int8, device)
    out = int8_conv2d_nhwc(x, w, s, p, d)
    assert out.dtype == torch.int32
    assert torch.equal(out, ref_conv(x, w, s, p, d))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[5]])
def test_depthwise_exact(case, device):
    b, h, w_, c, _, kh, kw, s, p, d = _kpair(case)
    x = rand((b, h, w_, c), torch.int8, device)
    w = rand((c, kh, kw, 1), torch.int8, device)
    assert torch.equal(int8_conv2d_nhwc(x, w, s, p, d, groups=c), ref_conv(x, w, s, p, d, groups=c))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("depthwise", [False, True])
def test_uint8_pad_value_is_zero_point(depthwise, device):
    """Asymmetric uint8 activations padded with their zero point: the int32 output equals
    sum (x - za)(w - zw) over the zero-padded float input, exactly."""
    b, h, w_, c, o = 2, 6, 5, 6, 10
    o = c if depthwise else o
    za = 37
    x = rand((b, h, w_, c), torch.uint8, device)
    w = rand((o, 3, 3, 1 if depthwise else c), torch.int8, device)
    zw = torch.randint(-4, 5, (o,), device=device)
    ep = Epilogue(out_dtype=torch.int32, act_zero_point=za, weight_zero_point=zw)
    out = int8_conv2d_nhwc(x, w, 2, 1, 1, groups=c if depthwise else 1, epilogue=ep, pad_value=za)
    expected = conv_product_reference(x, w, 2, 1, 1, c if depthwise else 1, pad_value=za, act_zero_point=za,
                                      weight_zero_point=zw)
    assert torch.equal(out, expected.to(torch.int32))
    # without an epilogue: the raw uint8 x int8 product with a nonzero pad value
    raw = int8_conv2d_nhwc(x, w, 1, 2, 1, groups=c if depthwise else 1, pad_value=200)
    assert torch.equal(raw, conv_product_reference(x, w, 1, 2, 1, c if depthwise else 1, pad_value=200)
                       .to(torch.int32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.uint8])
def test_conv_epilogue_residual_relu(depthwise, out_dtype, device):
    b, h, w_, c, o = 1, 7, 7, 8, 12
    o = c if depthwise else o
    x = rand((b, h, w_, c), torch.uint8, device)
    w = rand((o, 3, 3, 1 if depthwise else c), torch.int8, device)
    oh = ow = 7
    ep = Epilogue(weight_scale=torch.rand(o, device=device) * 0.01 + 1e-3, act_scale=0.05, act_zero_point=12,
                  bias=torch.randn(o, device=device), activation="relu",
                  residual=torch.randn(b, oh, ow, o, device=device), out_dtype=out_dtype,
                  out_scale=0.07 if out_dtype == torch.uint8 else None, out_zero_point=5)
    out = int8_conv2d_nhwc(x, w, 1, 1, 1, groups=c if depthwise else 1, epilogue=ep, pad_value=12)
    prod = conv_product_reference(x, w, 1, 1, 1, c if depthwise else 1, pad_value=12, act_zero_point=12)
    v = dequant_reference(prod.reshape(-1, o), ep).reshape(out.shape)
    mag = prod.abs().reshape(-1, o) * 0.05 * ep.weight_scale.double() + ep.bias.double().abs()
    mag = mag.reshape(out.shape) + ep.residual.double().abs()
    if out_dtype == torch.float16:
        err = (out.double() - v).abs()
        assert torch.all(err <= 8 * EPS32 * mag + 2.0 ** -11 * v.abs() + 2.0 ** -24)
    else:
        q_ref = finish_reference(v, ep)
        diff = (out.to(torch.int32) - q_ref.to(torch.int32)).abs()
        assert int(diff.max()) <= 1
        xq = v / 0.07
        assert torch.all((((xq - xq.floor()) - 0.5).abs() <= 8 * EPS32 * mag / 0.07 + 1e-6)[diff == 1])


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_view_input(device):
    xn = rand((2, 5, 6, 7), torch.int8, device)  # NCHW values
    x = xn.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # NHWC view, no copy
    w = rand((4, 3, 3, 5), torch.int8, device)
    assert torch.equal(int8_conv2d_nhwc(x, w, 1, 1), ref_conv(x.contiguous(), w, 1, 1, 1))
    xs = rand((2, 5, 6, 9), torch.int8, device)[..., 2:7]  # channel slice: strided, misaligned
    assert not xs.is_contiguous()
    assert torch.equal(int8_conv2d_nhwc(xs, w, 2, 1), ref_conv(xs.contiguous(), w, 2, 1, 1))
    w_view = rand((4, 5, 3, 3), torch.int8, device).permute(0, 2, 3, 1)  # OIHW storage read as OHWI
    assert torch.equal(int8_conv2d_nhwc(x, w_view, 1, 1), ref_conv(x.contiguous(), w_view, 1, 1, 1))


def test_conv_errors():
    x, w = rand((1, 5, 5, 4), torch.int8, "cpu"), rand((6, 3, 3, 4), torch.int8, "cpu")
    with pytest.raises(TypeError, match="x must have dtype"):
        int8_conv2d_nhwc(x.float(), w)
    with pytest.raises(TypeError, match="w must have dtype"):
        int8_conv2d_nhwc(x, w.to(torch.uint8))
    with pytest.raises(ValueError, match="4-D"):
        int8_conv2d_nhwc(x[0], w)
    with pytest.raises(ValueError, match="does not fit"):
        int8_conv2d_nhwc(x, rand((6, 3, 3, 3), torch.int8, "cpu"))
    with pytest.raises(NotImplementedError, match="depthwise"):
        int8_conv2d_nhwc(x, rand((6, 3, 3, 2), torch.int8, "cpu"), groups=2)
    with pytest.raises(ValueError, match="pad_value"):
        int8_conv2d_nhwc(x, w, padding=1, pad_value=200)
    with pytest.raises(ValueError, match="stride"):
        int8_conv2d_nhwc(x, w, stride=0)
    with pytest.raises(ValueError, match="empty"):
        int8_conv2d_nhwc(x, rand((6, 7, 7, 4), torch.int8, "cpu"))
    with pytest.raises(ValueError, match="residual must be NHWC"):
        int8_conv2d_nhwc(x, w, epilogue=Epilogue(weight_scale=1.0, act_scale=1.0, residual=torch.zeros(1, 5, 5, 6)))
    with pytest.raises(ValueError, match="per-tensor act_scale"):
        int8_conv2d_nhwc(x, w, epilogue=Epilogue(weight_scale=1.0, act_scale=torch.ones(9)))
