"""Triton integer GEMM (W8A8 / W4A8 / W4A4) vs the exact reference, and its fused epilogue vs
the float64 reference in zsq_engine.ops.int_gemm.reference. On CPU these run through the interpreter."""
import pytest
import torch

from _support.devices import DEVICES
from zsq_engine import ops
from zsq_engine.ops import dispatch
from zsq_engine.ops.int_gemm.reference import apply_reference, dequant_reference, zero_point_product_reference
from zsq_engine.opspec.epilogue import Epilogue
from zsq_engine.ops.int_gemm.reference import int_mm as ref_int_mm
from zsq_engine.ops.int4_pack.reference import pack_int4

triton = pytest.importorskip("triton")
ok, why = dispatch.backend_status("triton")
if not ok:
    pytest.skip(f"triton backend unavailable: {why}", allow_module_level=True)

from zsq_engine.kernels import int_gemm  # noqa: E402

pytestmark = pytest.mark.interpreter  # the Triton kernels, interpreted on a machine without a GPU

EPS32 = 2.0 ** -24
OUT_EPS = {torch.float32: EPS32, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


def rand_i8(*shape, device="cpu", lo=-128, hi=128):
    return torch.randint(lo, hi, shape, dtype=torch.int8 if lo < 0 else torch.uint8, device=device)


def with_extremes(t, lo, hi):
    """Put the range ends into the first elements so the packed paths see -8 and 7."""
    flat = t.view(-1)
    flat[0] = lo
    if flat.numel() > 1:
        flat[1] = hi
    return t


SHAPES = [(1, 1, 1), (37, 29, 75), (5, 33, 131), (16, 16, 32), (17, 7, 8), (3, 40, 63)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_int8_gemm_exact(m, n, k, device):
    a, w = rand_i8(m, k, device=device), rand_i8(n, k, device=device)
    out = int_gemm.int8_gemm(a, w)
    assert out.dtype == torch.int32 and out.shape == (m, n)
    assert torch.equal(out, ref_int_mm(a, w.t()))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("split_k", [2, 5])
def test_split_k_exact(split_k, device):
    m, n, k = 3, 21, 1100  # 1100: splits of 256 / 512 with a ragged tail
    a, w = rand_i8(m, k, device=device), rand_i8(n, k, device=device)
    assert torch.equal(int_gemm.int8_gemm(a, w, split_k=split_k), ref_int_mm(a, w.t()))


def test_split_k_heuristic():
    dev = torch.device("cpu")
    assert int_gemm.choose_split_k(128, 4096, 4096, dev) == 1
    assert int_gemm.choose_split_k(1, 4096, 256, dev) == 1  # too little K to split
    assert int_gemm.choose_split_k(1, 16, 4096, dev) > 1


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,n,k", [(37, 29, 75), (4, 9, 64), (1, 3, 1)])
def test_w4a8_exact_with_extremes(m, n, k, device):
    a = with_extremes(rand_i8(m, k, device=device), -128, 127)
    w4 = with_extremes(rand_i8(n, k, device=device, lo=-8, hi=8), -8, 7)
    w4[-1, -1] = -8
    expected = ref_int_mm(a, w4.t())
    assert torch.equal(int_gemm.w4a8_gemm(a, pack_int4(w4)), expected)
    assert torch.equal(int_gemm.w4a8_gemm(a, pack_int4(w4), split_k=2), expected)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("a_signed", [True, False])
@pytest.mark.parametrize("m,n,k", [(37, 29, 75), (2, 5, 33)])
def test_w4a4_exact(m, n, k, a_signed, device):
    a4 = rand_i8(m, k, device=device, lo=-8, hi=8) if a_signed else rand_i8(m, k, device=device, lo=0, hi=16)
    a4 = with_extremes(a4, -8, 7) if a_signed else with_extremes(a4, 0, 15)
    w4 = with_extremes(rand_i8(n, k, device=device, lo=-8, hi=8), 7, -8)
    out = int_gemm.w4a4_gemm(pack_int4(a4), pack_int4(w4), k, a_signed=a_signed)
    assert torch.equal(out, (a4.double() @ w4.double().t()).to(torch.int32))


@pytest.mark.parametrize("device", DEVICES)
def test_int_mm_registered_and_dispatched(device):
    assert "triton" in dispatch.implementations("int_mm")
    a, b = rand_i8(19, 45, device=device), rand_i8(45, 13, device=device)
    with ops.use_backend("triton", strict=True):
        assert torch.equal(ops.int_mm(a, b), ref_int_mm(a, b))


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_misaligned(device):
    m, n, k = 13, 11, 45
    big_a = rand_i8(m, k + 7, device=device)
    a = big_a[:, 3:3 + k]  # row stride k+7, storage offset 3 (not 16-byte aligned)
    w = rand_i8(k, n, device=device).t()  # N-contiguous weight view
    assert torch.equal(int_gemm.int8_gemm(a, w), ref_int_mm(a, w.t()))
    flat = rand_i8(m * k + 1, device=device)
    a2 = flat[1:].view(m, k)  # misaligned by one byte
    assert torch.equal(int_gemm.int8_gemm(a2, w), ref_int_mm(a2, w.t()))
    wp = pack_int4(rand_i8(n, k, device=device, lo=-8, hi=8))
    wp_view = torch.cat([wp, wp], dim=1)[:, : wp.shape[1]]  # strided packed rows
    assert torch.equal(int_gemm.w4a8_gemm(a, wp_view), int_gemm.w4a8_gemm(a.contiguous(), wp))


# ----------------------------------------------------------------------------- epilogue

def _check_float_out(out, v_ref, magnitude, dtype):
    assert out.dtype == dtype
    budget = 8 * EPS32 * magnitude + OUT_EPS[dtype] * v_ref.abs() + 1e-30
    err = (out.double() - v_ref).abs()
    assert torch.all(err <= budget), f"max err {err.max().item():.3g} vs budget {budget.max().item():.3g}"


def _check_requant(out, v_ref, magnitude, ep):
    assert out.dtype == ep.out_dtype
    q_ref = apply_reference_from_v(v_ref, ep)
    diff = (out.to(torch.int32) - q_ref.to(torch.int32)).abs()
    assert int(diff.max()) <= 1
    x = v_ref / float(ep.out_scale)
    tie_distance = ((x - x.floor()) - 0.5).abs()
    near_tie = tie_distance <= (8 * EPS32 * magnitude + 1e-12) / float(ep.out_scale) + 1e-6
    assert torch.all(near_tie[diff == 1]), "off by one away from a rounding tie"


def apply_reference_from_v(v, ep):
    from zsq_engine.ops.int_gemm.reference import finish_reference
    return finish_reference(v, ep)


def _operands(m, n, k, device, a_uint8=False, packed=False):
    a = rand_i8(m, k, device=device, lo=0, hi=256) if a_uint8 else rand_i8(m, k, device=device)
    w = rand_i8(n, k, device=device, lo=-8, hi=8) if packed else rand_i8(n, k, device=device)
    return a, w


EPILOGUE_CASES = [
    # (name, out_dtype, options)
    ("fp32 per-channel", torch.float32, dict()),
    ("fp16 bias relu", torch.float16, dict(bias=True, activation="relu")),
    ("bf16 relu6 per-row", torch.bfloat16, dict(activation="relu6", per_row=True)),
    ("fp32 residual fp16", torch.float32, dict(residual=torch.float16, bias=True)),
    ("fp32 residual int8", torch.float32, dict(residual=torch.int8, activation="relu")),
    ("fp32 asym uint8 a", torch.float32, dict(a_uint8=True, za=131)),
    ("fp32 both zero points", torch.float32, dict(za=-3, zw="per_channel", bias=True)),
    ("fp16 scalar wzp uint8", torch.float16, dict(a_uint8=True, za=7, zw=2)),
    ("int8 requant", torch.int8, dict(bias=True, residual=torch.float32)),
    ("uint8 requant relu6", torch.uint8, dict(activation="relu6", a_uint8=True, za=100, zw="per_channel")),
    ("uint8 requant colsum given", torch.uint8, dict(a_uint8=True, za=90, give_colsum=True)),
]


def _build_epilogue(m, n, a, w, out_dtype, opts, device):
    g = torch.Generator().manual_seed(1)
    ep = Epilogue(out_dtype=out_dtype, activation=opts.get("activation", "none"))
    ep.weight_scale = (torch.rand(n, generator=g) * 0.02 + 0.001).to(device)
    ep.act_scale = ((torch.rand(m, generator=g) * 0.1 + 0.01).to(device) if opts.get("per_row")
                    else 0.037)
    ep.act_zero_point = opts.get("za", 0)
    zw = opts.get("zw")
    if zw == "per_channel":
        ep.weight_zero_point = torch.randint(-5, 6, (n,), generator=g).to(device)
    elif zw is not None:
        ep.weight_zero_point = zw
    if opts.get("give_colsum"):
        ep.weight_col_sum = w.sum(1, dtype=torch.int32)
    if opts.get("bias"):
        ep.bias = (torch.randn(n, generator=g) * 3).to(device)
    rdt = opts.get("residual")
    if rdt is not None:
        if rdt in (torch.int8, torch.uint8):
            ep.residual = torch.randint(-128, 128, (m, n), generator=g, dtype=torch.int8).to(device)
            ep.residual_scale, ep.residual_zero_point = 0.05, 3
        else:
            ep.residual = (torch.randn(m, n, generator=g) * 4).to(device=device, dtype=rdt)
    if out_dtype in (torch.int8, torch.uint8):
        ep.out_scale = 0.11
        ep.out_zero_point = 0 if out_dtype == torch.int8 else 20
    return ep


def _magnitude(product, ep):
    absep = Epilogue(weight_scale=ep.weight_scale, act_scale=ep.act_scale, out_dtype=torch.float32)
    mag = dequant_reference(product.abs(), absep)
    if ep.bias is not None:
        mag = mag + ep.bias.double().abs()
    if ep.residual is not None:
        r = ep.residual.double()
        if ep.residual.dtype == torch.int8:
            r = (r - ep.residual_zero_point) * ep.residual_scale
        mag = mag + r.abs()
    return mag


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,out_dtype,opts", EPILOGUE_CASES, ids=[c[0] for c in EPILOGUE_CASES])
@pytest.mark.parametrize("kind", ["w8a8", "w4a8", "w8a8-splitk"])
def test_epilogue_against_float64(name, out_dtype, opts, kind, device):
    m, n, k = 21, 19, 77
    packed = kind == "w4a8"
    a, w = _operands(m, n, k, device, a_uint8=opts.get("a_uint8", False), packed=packed)
    ep = _build_epilogue(m, n, a, w, out_dtype, opts, device)
    if kind == "w4a8":
        out = int_gemm.w4a8_gemm(a, pack_int4(w), ep)
    else:
        out = int_gemm.int8_gemm(a, w, ep, split_k=3 if kind.endswith("splitk") else None)
    product = zero_point_product_reference(a, w, ep.act_zero_point, ep.weight_zero_point)
    v_ref = dequant_reference(product, ep)
    mag = _magnitude(product, ep)
    assert out.shape == (m, n)
    if out_dtype in (torch.int8, torch.uint8):
        _check_requant(out, v_ref, mag, ep)
    else:
        _check_float_out(out, v_ref, mag, out_dtype)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("a_uint8", [False, True])
def test_int32_out_with_zero_points_is_exact(a_uint8, device):
    m, n, k = 9, 23, 70
    a, w = _operands(m, n, k, device, a_uint8=a_uint8)
    ep = Epilogue(out_dtype=torch.int32, act_zero_point=128 if a_uint8 else 5,
                  weight_zero_point=torch.randint(-3, 4, (n,), device=device))
    out = int_gemm.int8_gemm(a, w, ep)
    expected = zero_point_product_reference(a, w, ep.act_zero_point, ep.weight_zero_point).to(torch.int32)
    assert torch.equal(out, expected)
    assert torch.equal(int_gemm.int8_gemm(a, w, ep, split_k=2), expected)
    # a raw uint8 product without an epilogue is exact too (the -128 shift is undone)
    assert torch.equal(int_gemm.int8_gemm(a, w), (a.double() @ w.double().t()).to(torch.int32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_dtype", [torch.int8, torch.uint8])
def test_requant_exact_at_ties_with_power_of_two_scales(out_dtype, device):
    """Power-of-two scales make every fp32 step exact, so the kernel must equal the reference
    bit for bit, including the exact .5 ties (round half to even) and the clamps."""
    m, n, k = 17, 18, 40
    a = rand_i8(m, k, device=device, lo=-3, hi=4)  # small products: x = acc / 2 stays in range,
    w = rand_i8(n, k, device=device, lo=-3, hi=4)  # and every odd acc is an exact .5 tie
    a[0] = 3
    w[:4] = 3  # a few large values so the clamps are hit too
    ep = Epilogue(weight_scale=torch.full((n,), 0.25, device=device), act_scale=0.5, out_dtype=out_dtype,
                  out_scale=0.25, out_zero_point=0 if out_dtype == torch.int8 else 100,
                  bias=torch.full((n,), 1.0, device=device))
    out = int_gemm.int8_gemm(a, w, ep)
    product = zero_point_product_reference(a, w)
    x = dequant_reference(product, ep) / 0.25
    ties = (x - x.floor()) == 0.5
    assert bool((ties & (x.floor() % 2 == 0)).any()) and bool((ties & (x.floor() % 2 == 1)).any())
    qmin, qmax = ep.quant_range()
    assert bool((x + ep.out_zero_point > qmax).any()), "the test must hit the upper clamp"
    assert torch.equal(out, apply_reference(product, ep))


# ----------------------------------------------------------------------------- errors

def test_errors_dtype_shape_packing():
    a, w = rand_i8(4, 10), rand_i8(6, 10)
    with pytest.raises(TypeError, match="a must have dtype"):
        int_gemm.int8_gemm(a.float(), w)
    with pytest.raises(TypeError, match="w must have dtype"):
        int_gemm.int8_gemm(a, w.to(torch.uint8))
    with pytest.raises(ValueError, match="same K"):
        int_gemm.int8_gemm(a, rand_i8(6, 11))
    with pytest.raises(ValueError, match="2-D"):
        int_gemm.int8_gemm(a[0], w)
    unpacked = rand_i8(6, 10, lo=0, hi=16)  # uint8 [N, K] where [N, K/2] is expected
    with pytest.raises(ValueError, match="looks unpacked"):
        int_gemm.w4a8_gemm(a, unpacked)
    with pytest.raises(TypeError, match="w_packed must have dtype"):
        int_gemm.w4a8_gemm(a, rand_i8(6, 5))
    with pytest.raises(ValueError, match="a_packed must be packed"):
        int_gemm.w4a4_gemm(rand_i8(4, 10, lo=0, hi=256), pack_int4(rand_i8(6, 10, lo=-8, hi=8)), 10)
    with pytest.raises(ValueError, match="inner dimensions"):
        int_gemm.int_mm(a, rand_i8(9, 3))


def test_errors_epilogue():
    a, w = rand_i8(4, 10), rand_i8(6, 10)
    with pytest.raises(ValueError, match="needs weight_scale and act_scale"):
        int_gemm.int8_gemm(a, w, Epilogue(out_dtype=torch.float16))
    with pytest.raises(ValueError, match="only the zero-point"):
        int_gemm.int8_gemm(a, w, Epilogue(out_dtype=torch.int32, bias=torch.zeros(6)))
    with pytest.raises(ValueError, match="needs out_scale"):
        int_gemm.int8_gemm(a, w, Epilogue(weight_scale=1.0, act_scale=1.0, out_dtype=torch.int8))
    with pytest.raises(ValueError, match="weight_scale must have 6 elements"):
        int_gemm.int8_gemm(a, w, Epilogue(weight_scale=torch.ones(5), act_scale=1.0))
    with pytest.raises(ValueError, match="residual must have shape"):
        int_gemm.int8_gemm(a, w, Epilogue(weight_scale=1.0, act_scale=1.0, residual=torch.zeros(6, 4)))
    with pytest.raises(ValueError, match="activation"):
        int_gemm.int8_gemm(a, w, Epilogue(weight_scale=1.0, act_scale=1.0, activation="gelu"))
    with pytest.raises(TypeError, match="out_dtype"):
        int_gemm.int8_gemm(a, w, Epilogue(weight_scale=1.0, act_scale=1.0, out_dtype=torch.float64))
