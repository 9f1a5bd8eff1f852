"""The integer GEMM family (``qgemm``, ``int_mm``) as torch.library ops, on every backend (reference /
cpu / triton through the interpreter / cuda when a GPU is visible): the typed epilogue arguments of
the schema, opcheck of both ops, results against float64 arithmetic written out here (not the
library's reference), backend routing and torch.compile without graph breaks."""
import pytest
import torch

from zsq_engine import ops
from zsq_engine.ops import dispatch
from zsq_engine.ops.int_gemm import library as L
from zsq_engine.opspec.epilogue import Epilogue, epilogue_from_schema_args, epilogue_to_schema_args
from zsq_engine.opspec.int4 import pack_int4  # the format itself: packing is another family's op

from ._backend import BACKENDS, backend_fixture

backend = pytest.fixture(params=BACKENDS)(backend_fixture)


def rand_q(shape, dtype, lo=None, hi=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lo = (-128 if dtype == torch.int8 else 0) if lo is None else lo
    hi = (127 if dtype == torch.int8 else 255) if hi is None else hi
    return torch.randint(lo, hi + 1, shape, generator=gen).to(dtype)


def full_epilogue(m, n, residual=None, device="cpu"):
    """Every field set, scales of both kinds (tensor and python float)."""
    gen = torch.Generator().manual_seed(1)
    return Epilogue(weight_scale=(torch.rand(n, generator=gen) * 0.01 + 0.001).to(device), act_scale=0.03,
                    act_zero_point=5, weight_zero_point=torch.randint(-3, 4, (n,), dtype=torch.int32).to(device),
                    bias=torch.randn(n, generator=gen).to(device),
                    residual=residual if residual is not None else rand_q((m, n), torch.int8, seed=2).to(device),
                    residual_scale=0.02, residual_zero_point=-4, activation="relu6", out_dtype=torch.uint8,
                    out_scale=torch.tensor([0.05], device=device), out_zero_point=7, quant_min=2, quant_max=250)


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


# ------------------------------------------------------------------ opcheck on every backend

def _cases(device):
    m, n, k = 6, 4, 9
    a = rand_q((m, k), torch.uint8, seed=3).to(device)
    w = rand_q((n, k), torch.int8, seed=4).to(device)
    wp = pack_int4(rand_q((n, k), torch.int8, -8, 7, seed=5)).to(device)
    return {
        "int_mm": (L.INT_MM, (rand_q((5, 7), torch.int8, seed=6).to(device),
                              rand_q((7, 3), torch.int8, seed=7).to(device))),
        "qgemm": (L.QGEMM, (a, w, *epilogue_to_schema_args(full_epilogue(m, n, device=device)), False, False, True, k)),
        "qgemm_w4": (L.QGEMM, (a, wp, *epilogue_to_schema_args(None), True, False, True, k)),
    }


def test_every_op_has_a_case():
    assert {op.name() for op in L.PRIMITIVES} == {op.name() for op, _ in _cases("cpu").values()}


@pytest.mark.parametrize("case", list(_cases("cpu")))
def test_opcheck(backend, case):
    name, device = backend
    op, args = _cases(device)[case]
    # the interpreter is slow: under it, the schema and fake checks (the kernel runs in both)
    utils = ("test_schema", "test_faketensor") if name == "triton" else None
    if utils:
        torch.library.opcheck(op, args, test_utils=utils)
    else:
        torch.library.opcheck(op, args)


# ------------------------------------------------------------------ results and routing

def test_custom_op_equals_fp64_arithmetic(backend):
    _, device = backend
    m, n, k = 6, 4, 9
    a, w = rand_q((m, k), torch.uint8, seed=8).to(device), rand_q((n, k), torch.int8, seed=9).to(device)
    ep = full_epilogue(m, n, device=device)
    acc = ((a.double() - ep.act_zero_point) @ (w.double() - ep.weight_zero_point.double().reshape(-1, 1)).t()).cpu()
    out = torch.ops.zsq.qgemm(a, w, *epilogue_to_schema_args(ep), False, False, True, k)
    eager = ops.qgemm(a, w, ep)
    mm = torch.ops.zsq.int_mm(a.to(torch.int16).sub(128).to(torch.int8), w.t().contiguous())
    want = expected_requant(acc, Epilogue(**{f: (v.cpu() if isinstance(v, torch.Tensor) else v)
                                             for f, v in vars(ep).items()}))
    # requantised outputs may differ by one next to a rounding tie (opspec.epilogue error budget)
    assert (out.cpu().int() - want.int()).abs().max() <= 1
    assert torch.equal(out, eager)
    assert torch.equal(mm.cpu(), ((a.cpu().double() - 128) @ w.cpu().double().t()).to(torch.int32))


def test_w4a8_and_w4a4_equal_the_unpacked_product(backend):
    _, device = backend
    m, n, k = 5, 6, 11
    a4, w4 = rand_q((m, k), torch.int8, -8, 7, seed=10), rand_q((n, k), torch.int8, -8, 7, seed=11)
    want = (a4.double() @ w4.double().t()).to(torch.int32)
    a4p, w4p = pack_int4(a4).to(device), pack_int4(w4).to(device)
    assert torch.equal(ops.qgemm(a4.to(device), w4p, w_packed=True, k=k).cpu(), want)
    assert torch.equal(ops.qgemm(a4p, w4p, w_packed=True, a_packed=True, k=k).cpu(), want)


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


def test_registry_is_filled_by_the_family_folders():
    """Every integer kernel is registered from its family's folder, under the torch.library op name."""
    for op in ("qgemm", "int_mm", "qconv2d_nhwc", "conv2d_int", "pack_int4", "unpack_int4"):
        assert hasattr(torch.ops.zsq, op)
        for backend, fn in dispatch.implementations(op).items():
            module = getattr(fn, "__module__", None) or ""
            assert module.startswith("zsq_engine.") and ".backends" not in module, (op, backend, module)


def test_compile_fullgraph_matches_eager(backend):
    _, device = backend
    m, n, k = 4, 3, 10
    a, w = rand_q((m, k), torch.int8, seed=12).to(device), rand_q((n, k), torch.int8, -8, 7, seed=13).to(device)
    wp, w_t = pack_int4(w), w.t().contiguous()
    ep = Epilogue(weight_scale=(torch.rand(n) + 0.1).to(device), act_scale=0.25, activation="relu",
                  out_dtype=torch.float32)

    def f(a, wp, w_t):
        return ops.qgemm(a, wp, ep, w_packed=True, k=k), ops.int_mm(a, w_t)

    torch._dynamo.reset()
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(a, wp, w_t)
    for g, e in zip(got, f(a, wp, w_t)):
        assert torch.equal(g, e)
