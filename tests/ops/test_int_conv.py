"""The integer conv family (``qconv2d_nhwc``, ``conv2d_int``) as torch.library ops, on every backend
(reference / cpu / triton through the interpreter / cuda when a GPU is visible): opcheck of both
ops, the conv against integer arithmetic written out here (int64 shifted-window sums, not the
library's reference) and torch.compile without graph breaks."""
import pytest
import torch
import torch.nn.functional as F

from zsq_engine import ops
from zsq_engine.ops import dispatch
from zsq_engine.ops.int_conv import library as L
from zsq_engine.opspec.epilogue import Epilogue, epilogue_to_schema_args

from ._backend import BACKENDS, backend_fixture

backend = pytest.fixture(params=BACKENDS)(backend_fixture)


def has_kernel(backend_name, op):
    """conv2d_int has only its reference (no kernel of its own on any backend)."""
    return backend_name in dispatch.implementations(op)


def rand_q(shape, dtype, seed, lo=None, hi=None):
    gen = torch.Generator().manual_seed(seed)
    lo = (-128 if dtype == torch.int8 else 0) if lo is None else lo
    hi = (127 if dtype == torch.int8 else 255) if hi is None else hi
    return torch.randint(lo, hi + 1, shape, generator=gen).to(dtype)


def _cases(device):
    n = 4
    x = rand_q((2, 5, 4, 3), torch.int8, 1).to(device)
    wc = rand_q((n, 3, 3, 3), torch.int8, 2).to(device)
    ep = Epilogue(weight_scale=(torch.rand(n) + 0.1).to(device), act_scale=0.5, bias=torch.randn(n).to(device),
                  out_dtype=torch.float32)
    xc, wi = rand_q((2, 3, 6, 5), torch.uint8, 3).to(device), rand_q((4, 3, 3, 3), torch.int8, 4).to(device)
    return {
        "qconv2d_nhwc": (L.QCONV2D_NHWC, (x, wc, [1, 1], [1, 1], [1, 1], 1, *epilogue_to_schema_args(ep), -3)),
        "qconv2d_nhwc_int32": (L.QCONV2D_NHWC, (x, wc, [2, 1], [0, 1], [1, 1], 1, *epilogue_to_schema_args(None), 0)),
        "conv2d_int": (L.CONV2D_INT, (xc, wi, [1, 2], [1, 0], [1, 1], 1, "NCHW")),
    }


def test_every_op_has_a_case():
    assert {op.name() for op in L.PRIMITIVES} == {op.name() for op, _ in _cases("cpu").values()}


@pytest.mark.parametrize("case", list(_cases("cpu")))
def test_opcheck(backend, case):
    name, device = backend
    op, args = _cases(device)[case]
    if not has_kernel(name, op.name().split("::")[1]):
        pytest.skip(f"no {name} kernel for {case}")
    utils = ("test_schema", "test_faketensor") if name == "triton" else None  # the interpreter is slow
    if utils:
        torch.library.opcheck(op, args, test_utils=utils)
    else:
        torch.library.opcheck(op, args)


def _conv_int64(x, w, stride, padding, groups, pad_value=0):
    """Direct integer convolution, NCHW, int64, as explicit shifted-window sums."""
    x = F.pad(x.long(), (padding, padding, padding, padding), value=pad_value)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = torch.zeros(n, o, oh, ow, dtype=torch.int64)
    og = o // groups
    for g in range(groups):
        xs, ws = x[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og].long()
        for i in range(kh):
            for j in range(kw):
                win = xs[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
                out[:, g * og:(g + 1) * og] += torch.einsum("nchw,oc->nohw", win, ws[:, :, i, j])
    return out


@pytest.mark.parametrize("groups", [1, 6])  # dense and depthwise (the CPU / CUDA depthwise kernels)
def test_qconv2d_nhwc_equals_integer_arithmetic(backend, groups):
    """The exact int32 product with asymmetric activations (padding holds the zero point), then a
    dequantising fp32 epilogue against the same product in fp64."""
    _, device = backend
    x = rand_q((2, 6, 7, 6), torch.uint8, 5)  # NCHW here
    w = rand_q((6, 6 // groups, 3, 3), torch.int8, 6)
    za = 9
    acc = _conv_int64(x.long() - za, w, 2, 1, groups, pad_value=0)  # x - za, padding = the zero point
    xn, wn = x.permute(0, 2, 3, 1).contiguous().to(device), w.permute(0, 2, 3, 1).contiguous().to(device)
    got = ops.qconv2d_nhwc(xn, wn, 2, 1, 1, groups, Epilogue(act_zero_point=za, out_dtype=torch.int32), pad_value=za)
    assert torch.equal(got.cpu(), acc.permute(0, 2, 3, 1).to(torch.int32))
    scale = torch.rand(6) * 0.01 + 0.001
    ep = Epilogue(weight_scale=scale.to(device), act_scale=0.04, act_zero_point=za, activation="relu",
                  out_dtype=torch.float32)
    want = (acc.permute(0, 2, 3, 1).double() * 0.04 * scale.double()).clamp_min(0)
    out = ops.qconv2d_nhwc(xn, wn, 2, 1, 1, groups, ep, pad_value=za).cpu().double()
    assert ((out - want).abs() <= 8 * 2.0 ** -24 * want.abs() + 1e-30).all()


def test_conv2d_int_equals_integer_arithmetic(backend):
    name, device = backend
    if not has_kernel(name, "conv2d_int"):
        pytest.skip(f"no {name} kernel for conv2d_int")
    x, w = rand_q((2, 4, 9, 8), torch.int8, 7), rand_q((6, 2, 3, 3), torch.int8, 8)
    want = _conv_int64(x, w, 1, 1, 2).to(torch.int32)
    assert torch.equal(ops.conv2d_int(x.to(device), w.to(device), 1, 1, 1, 2).cpu(), want)
    out = ops.conv2d_int(x.permute(0, 2, 3, 1).contiguous().to(device), w.to(device), 1, 1, 1, 2, layout="NHWC")
    assert torch.equal(out.cpu().permute(0, 3, 1, 2), want)


def test_compile_fullgraph_matches_eager(backend):
    name, device = backend
    with_int = has_kernel(name, "conv2d_int")
    x, wc = rand_q((1, 4, 4, 2), torch.int8, 9).to(device), rand_q((3, 3, 3, 2), torch.int8, 10).to(device)
    xi, wi = rand_q((1, 2, 5, 5), torch.int8, 11).to(device), rand_q((3, 2, 3, 3), torch.int8, 12).to(device)

    def f(x, wc, xi, wi):
        return ops.qconv2d_nhwc(x, wc, 1, 1, 1, 1, None, 0), (ops.conv2d_int(xi, wi, padding=1) if with_int else xi)

    torch._dynamo.reset()
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(x, wc, xi, wi)
    for g, e in zip(got, f(x, wc, xi, wi)):
        assert torch.equal(g, e)
