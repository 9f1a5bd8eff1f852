"""The integer ops as torch.library ops: schema, fake, per-device kernels (opcheck), the typed
epilogue arguments, backend forcing and torch.compile without graph breaks.

Results are checked against float64 arithmetic written out here, not the library's reference."""
import pytest
import torch
from torch.library import opcheck

from zsq_engine import ops
from zsq_engine.ops import dispatch, integer_ops, quantized_ops
from zsq_engine.opspec.epilogue import Epilogue, epilogue_from_schema_args, epilogue_to_schema_args

# Backends that can run the integer ops on CPU tensors here (triton only through the interpreter).
CPU_BACKENDS = [b for b in ("reference", "cpu", "triton") if b in ops.available_backends()]


def rand_q(shape, dtype, lo=None, hi=None):
    lo = (-128 if dtype == torch.int8 else 0) if lo is None else lo
    hi = (127 if dtype == torch.int8 else 255) if hi is None else hi
    return torch.randint(lo, hi + 1, shape).to(dtype)


def full_epilogue(m, n, residual=None):
    """Every field set, scales of both kinds (tensor and python float)."""
    return Epilogue(weight_scale=torch.rand(n) * 0.01 + 0.001, act_scale=0.03, act_zero_point=5,
                    weight_zero_point=torch.randint(-3, 4, (n,), dtype=torch.int32), bias=torch.randn(n),
                    residual=residual if residual is not None else rand_q((m, n), torch.int8),
                    residual_scale=0.02, residual_zero_point=-4, activation="relu6", out_dtype=torch.uint8,
                    out_scale=torch.tensor([0.05]), out_zero_point=7, quant_min=2, quant_max=250)


def expected_requant(acc, ep):
    """fp64 epilogue of ``full_epilogue`` on the exact corrected product ``acc`` [M, N]."""
    v = acc * ep.act_scale * ep.weight_scale.double().reshape(1, -1) + ep.bias.double()
    r = ep.residual.reshape(acc.shape).double()
    v = (v + (r - ep.residual_zero_point) * ep.residual_scale).clamp(0.0, 6.0)
    q = torch.round(v / ep.out_scale.double()) + ep.out_zero_point
    return q.clamp(ep.quant_min, ep.quant_max).to(ep.out_dtype)


# ------------------------------------------------------------------ the typed epilogue arguments

def test_epilogue_schema_args_round_trip_keeps_each_field_and_its_kind():
    ep = full_epilogue(4, 3)
    back = epilogue_from_schema_args(epilogue_to_schema_args(ep))
    for name in ("weight_scale", "weight_zero_point", "residual", "bias", "out_scale"):
        assert getattr(back, name) is getattr(ep, name), name  # tensors pass through, not copied
    assert isinstance(back.act_scale, float) and back.act_scale == 0.03
    assert isinstance(back.residual_scale, float) and back.residual_scale == 0.02
    for name in ("act_zero_point", "residual_zero_point", "activation", "out_dtype", "out_zero_point",
                 "quant_min", "quant_max"):
        assert getattr(back, name) == getattr(ep, name), name
    assert epilogue_from_schema_args(epilogue_to_schema_args(None)) is None
    plain = Epilogue(weight_scale=0.5, act_scale=0.25, weight_zero_point=0)
    back = epilogue_from_schema_args(epilogue_to_schema_args(plain))
    assert back == plain and not back.has_weight_zero_point()


def test_schema_names_every_argument():
    schema = torch.ops.zsq.qgemm.default._schema
    names = [a.name for a in schema.arguments]
    assert names[:3] == ["a", "w", "has_epilogue"] and names[-4:] == ["w_packed", "a_packed", "a_signed", "k"]
    assert str(torch.ops.zsq.int_mm.default._schema) == "zsq::int_mm(Tensor a, Tensor b) -> Tensor"


# ------------------------------------------------------------------ opcheck on every CPU backend

def _int_cases():
    a = rand_q((5, 7), torch.int8)
    b = rand_q((7, 3), torch.int8)
    x4 = rand_q((3, 5), torch.int8, -8, 7)
    xc = rand_q((2, 3, 6, 5), torch.uint8)
    wc = rand_q((4, 3, 3, 3), torch.int8)
    return {
        "int_mm": (integer_ops._INT_MM, (a, b)),
        "pack_int4": (integer_ops._PACK_INT4, (x4,)),
        "unpack_int4": (integer_ops._UNPACK_INT4, (ops.pack_int4(x4), 5, True)),
        "conv2d_int": (integer_ops._CONV2D_INT, (xc, wc, [1, 2], [1, 0], [1, 1], 1, "NCHW")),
    }


def _quantized_cases():
    m, n, k = 6, 4, 9
    a = rand_q((m, k), torch.uint8)
    w = rand_q((n, k), torch.int8)
    wp = ops.pack_int4(rand_q((n, k), torch.int8, -8, 7))
    x = rand_q((2, 5, 4, 3), torch.int8)
    wc = rand_q((n, 3, 3, 3), torch.int8)
    conv_ep = Epilogue(weight_scale=torch.rand(n) + 0.1, act_scale=0.5, bias=torch.randn(n), out_dtype=torch.float32)
    return {
        "qgemm": (quantized_ops._QGEMM, (a, w, *epilogue_to_schema_args(full_epilogue(m, n)), False, False, True, k)),
        "qgemm_w4": (quantized_ops._QGEMM, (a, wp, *epilogue_to_schema_args(None), True, False, True, k)),
        "qconv2d_nhwc": (quantized_ops._QCONV2D_NHWC,
                         (x, wc, [1, 1], [1, 1], [1, 1], 1, *epilogue_to_schema_args(conv_ep), -3)),
    }


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
@pytest.mark.parametrize("case", ["int_mm", "pack_int4", "unpack_int4", "conv2d_int", "qgemm", "qgemm_w4",
                                  "qconv2d_nhwc"])
def test_opcheck(case, backend):
    op, args = {**_int_cases(), **_quantized_cases()}[case]
    if backend not in dispatch.implementations(op.name().split("::")[1]):
        pytest.skip(f"no {backend} kernel for {case}")
    with ops.use_backend(backend):
        opcheck(op, args)


@pytest.mark.interpreter
@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton cannot run here")
def test_opcheck_triton_interpreted():
    # one op per kernel family is enough under the (slow) interpreter
    op, args = _quantized_cases()["qgemm"]
    with ops.use_backend("triton", strict=True):
        opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


# ------------------------------------------------------------------ results and routing

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_custom_op_equals_fp64_arithmetic(backend):
    m, n, k = 6, 4, 9
    a, w = rand_q((m, k), torch.uint8), rand_q((n, k), torch.int8)
    ep = full_epilogue(m, n)
    acc = (a.double() - ep.act_zero_point) @ (w.double() - ep.weight_zero_point.double().reshape(-1, 1)).t()
    with ops.use_backend(backend):
        out = torch.ops.zsq.qgemm(a, w, *epilogue_to_schema_args(ep), False, False, True, k)
        eager = ops.qgemm(a, w, ep)
        mm = torch.ops.zsq.int_mm(a.to(torch.int16).sub(128).to(torch.int8), w.t().contiguous())
    want = expected_requant(acc, ep)
    # requantised outputs may differ by one next to a rounding tie (opspec.epilogue error budget)
    assert (out.int() - want.int()).abs().max() <= 1
    assert torch.equal(out, eager)
    assert torch.equal(mm, ((a.double() - 128) @ w.double().t()).to(torch.int32))


def test_cpu_tensors_reach_the_backend_dispatch_picks(monkeypatch):
    """The op's CPU kernel is dispatch's choice: the 'cpu' kernel by default, the reference when
    use_backend / ZSQ_BACKEND force it."""
    if "cpu" not in ops.available_backends():
        pytest.skip("C++ extension not built")
    calls = []
    real = dispatch.implementations("int_mm")["cpu"]
    monkeypatch.setitem(dispatch._REGISTRY["int_mm"], "cpu", lambda *a: calls.append(1) or real(*a))
    a, b = rand_q((3, 4), torch.int8), rand_q((4, 2), torch.int8)
    torch.ops.zsq.int_mm(a, b)
    assert len(calls) == 1
    with ops.use_backend("reference"):
        torch.ops.zsq.int_mm(a, b)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    torch.ops.zsq.int_mm(a, b)
    assert len(calls) == 1


@pytest.mark.slow
def test_torch_compile_sees_the_ops_without_graph_breaks():
    torch._dynamo.reset()
    m, n, k = 4, 3, 10
    a, w = rand_q((m, k), torch.int8), rand_q((n, k), torch.int8, -8, 7)
    wp = ops.pack_int4(w)
    ep = Epilogue(weight_scale=torch.rand(n) + 0.1, act_scale=0.25, activation="relu", out_dtype=torch.float32)
    x, wc = rand_q((1, 4, 4, 2), torch.int8), rand_q((n, 3, 3, 2), torch.int8)

    def f(a, wp, x, wc):
        y = ops.qgemm(a, wp, ep, w_packed=True, k=k)
        z = ops.qconv2d_nhwc(x, wc, 1, 1, 1, 1, None, 0)
        return y, z, ops.unpack_int4(wp, k), ops.int_mm(a, ops.unpack_int4(wp, k).t().contiguous())

    got = torch.compile(f, backend="aot_eager", fullgraph=True)(a, wp, x, wc)
    want = f(a, wp, x, wc)
    for g, e in zip(got, want):
        assert torch.equal(g, e)
