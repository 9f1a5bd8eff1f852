"""The conv-forms family as torch.library ops: opcheck of ``zsq::conv3x3_narrow`` and
``zsq::upsample2x_conv3x3`` (schema, fake, registered autograd, compiled forward + backward), their
registered gradient formulas against autograd through the plain convolution in float64, and the
public functions under torch.compile without graph breaks. Values and eager gradients of the forms
against the plain convolutions: tests/test_conv_forms.py. These ops have no per-backend kernels
(plain PyTorch on every device), so the backend is not a parameter here."""
import pytest
import torch
import torch.nn.functional as F

from zsq_engine import ops
from zsq_engine.ops.conv_forms import library as L

CASES = {  # op, x shape, weight shape (few outputs, few inputs, upsampling)
    "narrow_out": (L.conv3x3_narrow, (2, 6, 5, 4), (1, 6, 3, 3)),
    "narrow_in": (L.conv3x3_narrow, (2, 1, 5, 6), (4, 1, 3, 3)),
    "upsample": (L.upsample2x_conv3x3, (2, 3, 4, 5), (2, 3, 3, 3)),
}


def _inputs(x_shape, w_shape, bias=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(sum(x_shape) + sum(w_shape))
    x = torch.randn(x_shape, generator=g, dtype=dtype).requires_grad_()
    w = torch.randn(w_shape, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(w_shape[0], generator=g, dtype=dtype).requires_grad_() if bias else None
    return x, w, b


def _plain(op, x, w, b):
    if op is L.upsample2x_conv3x3:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    return F.conv2d(x, w, b, padding=1)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_opcheck(case, bias):
    op, xs, ws = CASES[case]
    torch.library.opcheck(op, _inputs(xs, ws, bias, torch.float32))


@pytest.mark.parametrize("case", list(CASES))
def test_op_value_and_registered_gradients_equal_the_plain_convolution(case):
    op, xs, ws = CASES[case]
    x, w, b = _inputs(xs, ws)
    got, want = op(x, w, b), _plain(op, x, w, b)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    dy = torch.randn_like(want)
    for a, e in zip(torch.autograd.grad(got, (x, w, b), dy), torch.autograd.grad(want, (x, w, b), dy)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", list(CASES))
def test_compile_fullgraph_matches_eager(case):
    op, xs, ws = CASES[case]
    fn = ops.upsample2x_conv3x3 if op is L.upsample2x_conv3x3 else ops.conv3x3_narrow
    x, w, b = _inputs(xs, ws)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, w, b: fn(x * 2, w, b), fullgraph=True, backend="aot_eager")
    eager = fn(x * 2, w, b)
    got = compiled(x, w, b)
    torch.testing.assert_close(got, eager, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(eager)
    for a, e in zip(torch.autograd.grad(got, (x, w, b), dy), torch.autograd.grad(eager, (x, w, b), dy)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
