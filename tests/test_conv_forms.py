"""The re-expressed convolutions: ops.upsample2x_conv3x3 (nearest x2 upsample + 3x3 conv as four
2x2 phase convolutions) and ops.conv3x3_narrow (few input or output channels as GEMMs), against
F.interpolate + F.conv2d in float64 (values and the gradients of input, weight and bias); where
they are used (generators, QuantConv2d, the QAT teacher copy) against the plain modules."""
import pytest
import torch
import torch.nn.functional as F

from zsq_engine import ops
from zsq_engine.qat.generators import GDFQGenerator, ZAQGenerator
from zsq_engine.quant.modules import QuantConv2d
from zsq_engine.quant.quantizer import QuantSpec


def upsample_then_conv(x, w, b):
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)


def conv(x, w, b):
    return F.conv2d(x, w, b, padding=1)


def check_against(fn, want_fn, x_shape, w_shape, bias, seed, tol=1e-10, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, generator=g, dtype=dtype).requires_grad_()
    w = torch.randn(w_shape, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(w_shape[0], generator=g, dtype=dtype).requires_grad_() if bias else None
    got = fn(x, w, b)
    want = want_fn(x, w, b)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    if want.numel() == 0:
        return
    grad_out = torch.randn(want.shape, generator=g, dtype=dtype)
    inputs = [t for t in (x, w, b) if t is not None]
    for a, e in zip(torch.autograd.grad(got, inputs, grad_out), torch.autograd.grad(want, inputs, grad_out)):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol * max(1.0, e.abs().max().item()))


UPSAMPLE_SHAPES = [((2, 3, 5, 7), 4), ((1, 1, 1, 1), 1), ((3, 8, 4, 4), 16), ((2, 16, 7, 7), 5), ((1, 2, 1, 6), 3)]


@pytest.mark.parametrize("x_shape,c_out", UPSAMPLE_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_upsample2x_conv3x3_matches_upsample_then_conv(x_shape, c_out, bias):
    check_against(ops.upsample2x_conv3x3, upsample_then_conv, x_shape, (c_out, x_shape[1], 3, 3), bias,
                  seed=sum(x_shape) + c_out)


# (x shape, C_out): few outputs (GEMM then shifted sums), few inputs (shifted copies then GEMM),
# equal counts, 1x1 and 1-row images
NARROW_SHAPES = [((2, 16, 6, 5), 1), ((3, 64, 9, 9), 3), ((2, 1, 7, 8), 16), ((2, 3, 5, 5), 8),
                 ((1, 4, 4, 4), 4), ((2, 2, 1, 1), 5), ((1, 6, 1, 9), 2)]


@pytest.mark.parametrize("x_shape,c_out", NARROW_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv3x3_narrow_matches_conv2d(x_shape, c_out, bias):
    check_against(ops.conv3x3_narrow, conv, x_shape, (c_out, x_shape[1], 3, 3), bias, seed=sum(x_shape) * c_out)


@pytest.mark.parametrize("fn,want_fn,x_shape,w_shape", [
    (ops.upsample2x_conv3x3, upsample_then_conv, (4, 32, 7, 7), (16, 32, 3, 3)),
    (ops.conv3x3_narrow, conv, (4, 64, 14, 14), (1, 64, 3, 3)),
    (ops.conv3x3_narrow, conv, (4, 1, 28, 28), (16, 1, 3, 3)),
])
def test_float32_is_within_rounding_of_float64(fn, want_fn, x_shape, w_shape):
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(x_shape, generator=g), torch.randn(w_shape, generator=g), torch.randn(w_shape[0], generator=g)
    want = want_fn(x.double(), w.double(), b.double())
    torch.testing.assert_close(fn(x, w, b).double(), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fn,want_fn,c_in,c_out", [(ops.upsample2x_conv3x3, upsample_then_conv, 4, 3),
                                                   (ops.conv3x3_narrow, conv, 8, 1),
                                                   (ops.conv3x3_narrow, conv, 1, 8)])
def test_non_contiguous_and_empty_inputs(fn, want_fn, c_in, c_out):
    w, b = torch.randn(c_out, c_in, 3, 3, dtype=torch.float64), torch.randn(c_out, dtype=torch.float64)
    x = torch.randn(2, 9, 6, c_in, dtype=torch.float64).permute(0, 3, 2, 1)      # [2, C_in, 6, 9], strided
    assert not x.is_contiguous()
    torch.testing.assert_close(fn(x, w, b), want_fn(x.contiguous(), w, b), rtol=1e-10, atol=1e-10)
    cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fn(cl, w, b), want_fn(x.contiguous(), w, b), rtol=1e-10, atol=1e-10)
    empty = torch.zeros(0, c_in, 5, 4, dtype=torch.float64)
    assert fn(empty, w, b).shape == want_fn(empty, w, b).shape


@pytest.mark.parametrize("fn", [ops.upsample2x_conv3x3, ops.conv3x3_narrow])
def test_bad_arguments_are_named(fn):
    x, w = torch.randn(2, 3, 4, 4), torch.randn(5, 3, 3, 3)
    with pytest.raises(ValueError, match="x must be"):
        fn(x[0], w)
    with pytest.raises(ValueError, match="weight must be"):
        fn(x, torch.randn(5, 3, 5, 5))
    with pytest.raises(ValueError, match="weight must be"):
        fn(x, torch.randn(5, 4, 3, 3))
    with pytest.raises(ValueError, match="bias must be"):
        fn(x, w, torch.randn(4))
    with pytest.raises(TypeError, match="x must have dtype"):
        fn(x.long(), w)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fn(x.numpy(), w)


def test_narrow_conv_pays_only_for_narrow_3x3_stride_1_cpu_convs():
    x1, x16, x64 = torch.randn(1, 1, 8, 8), torch.randn(1, 16, 8, 8), torch.randn(1, 64, 8, 8)
    assert ops.narrow_conv_pays(x1, torch.randn(16, 1, 3, 3))
    assert ops.narrow_conv_pays(x64, torch.randn(3, 64, 3, 3))
    assert not ops.narrow_conv_pays(x16, torch.randn(16, 16, 3, 3))           # wide: oneDNN wins
    assert not ops.narrow_conv_pays(torch.randn(1, 3, 8, 8), torch.randn(16, 3, 3, 3))  # RGB stem: measured slower
    assert not ops.narrow_conv_pays(x1, torch.randn(16, 1, 5, 5))             # not 3x3
    assert not ops.narrow_conv_pays(x1, torch.randn(16, 1, 3, 3), stride=(2, 2))
    assert not ops.narrow_conv_pays(x1, torch.randn(16, 1, 3, 3), padding=(0, 0))
    assert not ops.narrow_conv_pays(x1, torch.randn(16, 1, 3, 3), dilation=(2, 2))
    assert not ops.narrow_conv_pays(x1.half(), torch.randn(16, 1, 3, 3).half())
    assert not ops.narrow_conv_pays(x1.to("meta"), torch.randn(16, 1, 3, 3, device="meta"))  # CPU only


@pytest.mark.slow
@pytest.mark.parametrize("make", [lambda: GDFQGenerator((1, 28, 28), 10), lambda: ZAQGenerator((3, 30, 30), 32),
                                  lambda: ZAQGenerator((1, 12, 12), 16)])
def test_generators_compute_the_same_function_with_fast_convs(make):
    torch.manual_seed(0)
    gen = make().double()
    z = torch.randn(6, gen.latent_dim, dtype=torch.float64)
    labels = torch.randint(0, 10, (6,))
    results = []
    for fast in (True, False):
        gen.fast_convs = fast
        gen.zero_grad(set_to_none=True)
        out = gen(z, labels)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in gen.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-9, atol=1e-9)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_quant_conv_with_a_narrow_stem_matches_the_plain_convolution():
    """QuantConv2d takes the GEMM form for a 1-channel 3x3 stem on CPU: same values and gradients
    as F.conv2d on the same fake-quantized weight."""
    torch.manual_seed(1)
    layer = QuantConv2d(torch.nn.Conv2d(1, 8, 3, padding=1), QuantSpec(bits=4, per_channel=True), None)
    layer.calibrate_weight()
    x = torch.randn(5, 1, 10, 10, requires_grad=True)
    got = layer(x)
    grad_out = torch.randn(got.shape)
    got_grads = torch.autograd.grad(got, (x, layer.weight, layer.bias), grad_out)
    w_q = layer.weight_quantizer(layer.weight)
    want = F.conv2d(x, w_q, layer.bias, padding=1)
    want_grads = torch.autograd.grad(want, (x, layer.weight, layer.bias), grad_out)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
