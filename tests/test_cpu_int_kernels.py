"""The C++ CPU integer GEMM / conv kernels (csrc/cpu/int_*), run directly on every micro-kernel
ISA this CPU has, against integer arithmetic written out here.

tests/test_ops_quantized.py runs every backend on a few shapes; this file goes after what is
specific to the C++ kernels: each ISA path (ZSQ_CPU_INT_ISA), row / column tile edges of the
blocked driver, K % 4 != 0 (the VNNI k-groups), kernel sizes 1..7 with stride, dilation and
non-square padding, depthwise and grouped convs, full-range and extreme operands, int4 edge
values, zero points with int8 and uint8 activations, every epilogue option, 1 and 2 threads,
the weight-pack cache and the argument checks of the binding.

Oracle: exact products as int64 matmuls (GEMM) or fp64 F.conv2d on integer values (exact: every
partial sum is an integer far below 2^53); epilogues in fp64 from that exact product.
"""
import pytest
import torch

from _support.integer import (check_float_out, check_requant, conv_ref, epilogue_expected, gemm_ref, rand_int,
                              threads)  # noqa: F401 (threads: a fixture)
from zsq_engine import ops
from zsq_engine._ext import get_extension
from zsq_engine.opspec.epilogue import Epilogue

_C = get_extension()
pytestmark = pytest.mark.skipif(_C is None or not hasattr(_C, "int_gemm_cpu"),
                                reason="the C++ extension (CPU integer kernels) is not built")

ALL_ISAS = ["scalar", "avx2", "avx512_vnni"]


def _supported_isas():
    return _C.int_isas_cpu() if _C is not None and hasattr(_C, "int_isas_cpu") else []


@pytest.fixture(params=ALL_ISAS)
def isa(request, monkeypatch):
    """Force one micro-kernel through the environment variable the cpu backend reads."""
    if request.param not in _supported_isas():
        pytest.skip(f"this CPU has no {request.param} integer path")
    monkeypatch.setenv("ZSQ_CPU_INT_ISA", request.param)
    return request.param


def run_cpu(fn, *args, **kwargs):
    with ops.use_backend("cpu", strict=True):
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------------- GEMM

@pytest.mark.parametrize("m,n,k", [
    (1, 1, 1), (1, 33, 7), (5, 16, 4), (6, 64, 129), (7, 65, 1), (97, 17, 13), (200, 70, 259),
])
def test_gemm_int8_exact_every_isa(isa, m, n, k):
    """M crosses the 6-row micro-tile and the ~96-row tile, N the 16-column panel and the
    64-column chunk, K is not a multiple of 4."""
    a, w = rand_int((m, k), -128, 127, torch.int8), rand_int((n, k), -128, 127, torch.int8)
    out = run_cpu(ops.qgemm, a, w)
    assert out.dtype == torch.int32 and torch.equal(out, gemm_ref(a, w).int())


def test_gemm_extreme_operands_long_k(isa):
    """-128 * -128 summed over K = 4099 (just under 2^26 per output): the largest products, the
    +128 activation shift of the VNNI path, and uint8 255 * -128."""
    k = 4099
    a = torch.full((3, k), -128, dtype=torch.int8)
    a[1] = 127
    w = torch.full((18, k), -128, dtype=torch.int8)
    w[5] = 127
    assert torch.equal(run_cpu(ops.qgemm, a, w), gemm_ref(a, w).int())
    au = torch.full((3, k), 255, dtype=torch.uint8)
    assert torch.equal(run_cpu(ops.qgemm, au, w), gemm_ref(au, w).int())


@pytest.mark.parametrize("fmt", ["w4a8", "w4a4", "w4a4u"])
@pytest.mark.parametrize("k", [1, 8, 67])
def test_gemm_packed_int4_edges(isa, fmt, k):
    """int4 weights (and activations) at -8 and 7 (0 and 15 unsigned), odd and even k."""
    m, n = 11, 23
    w = rand_int((n, k), -8, 7, torch.int8)
    w[0].fill_(-8)
    w[1].fill_(7)
    if fmt == "w4a4u":
        a = rand_int((m, k), 0, 15, torch.uint8)
        a[0].fill_(15)
    elif fmt == "w4a4":
        a = rand_int((m, k), -8, 7, torch.int8)
        a[0].fill_(-8)
        a[1].fill_(7)
    else:
        a = rand_int((m, k), -128, 127, torch.int8)
    kwargs = dict(w_packed=True, k=k)
    aa = a
    if fmt != "w4a8":
        aa = ops.pack_int4(a)
        kwargs.update(a_packed=True, a_signed=fmt == "w4a4")
    out = run_cpu(ops.qgemm, aa, ops.pack_int4(w), **kwargs)
    assert torch.equal(out, gemm_ref(a, w).int())


@pytest.mark.parametrize("adtype,za", [(torch.uint8, 0), (torch.uint8, 131), (torch.int8, -7), (torch.int8, 5)])
@pytest.mark.parametrize("zw_kind", ["none", "scalar", "per_channel"])
def test_gemm_zero_points_int32(isa, adtype, za, zw_kind):
    m, n, k = 13, 37, 45
    lo, hi = (0, 255) if adtype == torch.uint8 else (-128, 127)
    a, w = rand_int((m, k), lo, hi, adtype), rand_int((n, k), -128, 127, torch.int8)
    zw = {"none": None, "scalar": 3, "per_channel": torch.randint(-9, 10, (n,), dtype=torch.int32)}[zw_kind]
    ep = Epilogue(act_zero_point=za, weight_zero_point=zw, out_dtype=torch.int32)
    out = run_cpu(ops.qgemm, a, w, ep)
    assert torch.equal(out, gemm_ref(a, w, za, zw).int())


def test_gemm_strided_rows_and_two_threads(isa, threads):
    """A row stride larger than K (a column slice) is read in place; results do not depend on
    the thread count."""
    big = rand_int((150, 300), -128, 127, torch.int8)
    a = big[:, 10:261]
    w = rand_int((130, 251), -128, 127, torch.int8)
    assert torch.equal(run_cpu(ops.qgemm, a, w), gemm_ref(a, w).int())


# ----------------------------------------------------------------------------------- conv

CONV_CASES = [
    # kh, kw, stride, padding, dilation, groups, c, o
    (1, 1, (1, 1), (0, 0), (1, 1), 1, 13, 17),
    (1, 1, (2, 2), (0, 0), (1, 1), 1, 8, 33),
    (3, 3, (1, 1), (1, 1), (1, 1), 1, 5, 16),
    (3, 3, (2, 2), (1, 1), (1, 1), 1, 7, 9),
    (3, 3, (1, 2), (2, 1), (2, 1), 1, 6, 5),
    (5, 5, (1, 1), (2, 2), (1, 1), 1, 3, 20),
    (7, 7, (2, 2), (3, 3), (1, 1), 1, 3, 8),
    (3, 5, (1, 1), (1, 2), (1, 1), 1, 4, 7),
    (3, 3, (1, 1), (1, 1), (1, 1), 3, 9, 6),    # grouped, not depthwise
    (1, 1, (1, 1), (0, 0), (1, 1), 4, 8, 12),   # grouped 1x1
    (3, 3, (1, 1), (1, 1), (1, 1), 1, 200, 20),  # gather runs of 600 bytes per kernel row
    (3, 3, (1, 1), (2, 2), (2, 2), 1, 40, 12),   # dilated: one 40-byte run per tap
]


@pytest.mark.slow
@pytest.mark.parametrize("kh,kw,stride,padding,dilation,groups,c,o", CONV_CASES)
@pytest.mark.parametrize("xdtype,pad_value", [(torch.uint8, 0), (torch.uint8, 200), (torch.int8, -100)])
def test_conv_int32_exact_every_isa(isa, kh, kw, stride, padding, dilation, groups, c, o, xdtype, pad_value):
    lo, hi = (0, 255) if xdtype == torch.uint8 else (-128, 127)
    x = rand_int((2, 11, 9, c), lo, hi, xdtype)
    w = rand_int((o, kh, kw, c // groups), -128, 127, torch.int8)
    out = run_cpu(ops.qconv2d_nhwc, x, w, stride, padding, dilation, groups, pad_value=pad_value)
    assert out.shape[-1] == o and out.dtype == torch.int32
    assert torch.equal(out, conv_ref(x, w, stride, padding, dilation, groups, pad_value).int())


@pytest.mark.parametrize("xdtype,za", [(torch.uint8, 117), (torch.int8, -20)])
def test_conv_zero_points_pad_with_act_zero_point(isa, xdtype, za):
    """Asymmetric activations: the padding holds za, so padded taps contribute exactly zero."""
    lo, hi = (0, 255) if xdtype == torch.uint8 else (-128, 127)
    x = rand_int((1, 10, 10, 12), lo, hi, xdtype)
    w = rand_int((19, 3, 3, 12), -128, 127, torch.int8)
    zw = torch.randint(-5, 6, (19,), dtype=torch.int32)
    ep = Epilogue(act_zero_point=za, weight_zero_point=zw, out_dtype=torch.int32)
    out = run_cpu(ops.qconv2d_nhwc, x, w, 2, 1, epilogue=ep, pad_value=za)
    assert torch.equal(out, conv_ref(x, w, (2, 2), (1, 1), (1, 1), 1, za, za, zw).int())


@pytest.mark.slow
@pytest.mark.parametrize("k,stride,padding,dilation", [
    (3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (5, 2, 2, 1), (7, 1, 3, 1), (3, 1, 2, 2), (1, 1, 0, 1),
])
@pytest.mark.parametrize("c", [1, 19, 96])
@pytest.mark.parametrize("xdtype,pad_value", [(torch.uint8, 77), (torch.int8, -128)])
def test_depthwise_int32_exact(k, stride, padding, dilation, c, xdtype, pad_value):
    lo, hi = (0, 255) if xdtype == torch.uint8 else (-128, 127)
    x = rand_int((2, 9, 8, c), lo, hi, xdtype)
    w = rand_int((c, k, k, 1), -128, 127, torch.int8)
    w[0].fill_(-128)
    out = run_cpu(ops.qconv2d_nhwc, x, w, stride, padding, dilation, c, pad_value=pad_value)
    ref = conv_ref(x, w, (stride, stride), (padding, padding), (dilation, dilation), c, pad_value)
    assert torch.equal(out, ref.int())


@pytest.mark.parametrize("zw_kind", ["scalar", "per_channel"])
def test_depthwise_zero_points(zw_kind, threads):
    c = 40
    x = rand_int((3, 12, 12, c), 0, 255, torch.uint8)
    w = rand_int((c, 3, 3, 1), -128, 127, torch.int8)
    zw = -4 if zw_kind == "scalar" else torch.randint(-6, 7, (c,), dtype=torch.int32)
    ep = Epilogue(act_zero_point=90, weight_zero_point=zw, out_dtype=torch.int32)
    out = run_cpu(ops.qconv2d_nhwc, x, w, 1, 1, 1, c, epilogue=ep, pad_value=90)
    assert torch.equal(out, conv_ref(x, w, (1, 1), (1, 1), (1, 1), c, 90, 90, zw).int())


def test_conv_large_map_two_threads(isa, threads):
    """Enough pixels for several row tiles per thread, with a wide K (3x3x64 = 576)."""
    x = rand_int((2, 20, 20, 64), -128, 127, torch.int8)
    w = rand_int((48, 3, 3, 64), -128, 127, torch.int8)
    out = run_cpu(ops.qconv2d_nhwc, x, w, 1, 1)
    assert torch.equal(out, conv_ref(x, w, (1, 1), (1, 1), (1, 1), 1, 0).int())


# ------------------------------------------------------------------------------- epilogues

RESIDUALS = ["none", "fp32", "fp16", "bf16", "int8", "uint8"]


@pytest.mark.slow
@pytest.mark.parametrize("residual_kind", RESIDUALS)
@pytest.mark.parametrize("act", ["none", "relu", "relu6"])
def test_gemm_epilogue_float_out(isa, residual_kind, act):
    m, n, k = 23, 40, 77
    a = rand_int((m, k), 0, 255, torch.uint8)
    w = rand_int((n, k), -128, 127, torch.int8)
    zw = torch.randint(-3, 4, (n,), dtype=torch.int32)
    sa = torch.rand(m) * 0.01 + 1e-3   # per row
    sw = torch.rand(n) * 0.01 + 1e-4   # per channel
    bias = torch.randn(n)
    residual, res_scale, res_zp = None, None, 0
    if residual_kind in ("fp32", "fp16", "bf16"):
        residual = torch.randn(m, n).to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[residual_kind])
    elif residual_kind == "int8":
        residual, res_scale, res_zp = rand_int((m, n), -128, 127, torch.int8), 0.03, -3
    elif residual_kind == "uint8":
        residual, res_scale, res_zp = rand_int((m, n), 0, 255, torch.uint8), 0.02, 128
    ep = Epilogue(weight_scale=sw, act_scale=sa, act_zero_point=121, weight_zero_point=zw, bias=bias,
                  residual=residual, residual_scale=res_scale, residual_zero_point=res_zp, activation=act)
    out = run_cpu(ops.qgemm, a, w, ep)
    ref, mag = epilogue_expected(gemm_ref(a, w, 121, zw), m, n, sa=sa, sw=sw, bias=bias, residual=residual,
                                 res_scale=res_scale, res_zp=res_zp, act=act)
    check_float_out(out, ref, mag, torch.float32)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_gemm_epilogue_half_outputs(isa, out_dtype):
    m, n, k = 9, 21, 33
    a, w = rand_int((m, k), -128, 127, torch.int8), rand_int((n, k), -128, 127, torch.int8)
    sw = torch.rand(n) * 0.001 + 1e-4
    ep = Epilogue(weight_scale=sw, act_scale=0.05, bias=torch.randn(n), activation="relu", out_dtype=out_dtype)
    out = run_cpu(ops.qgemm, a, w, ep)
    ref, mag = epilogue_expected(gemm_ref(a, w), m, n, sa=0.05, sw=sw, bias=ep.bias, act="relu")
    check_float_out(out, ref, mag, out_dtype)


@pytest.mark.parametrize("out_dtype,zp,qrange", [(torch.int8, -5, (-128, 127)), (torch.uint8, 60, (0, 255)),
                                                 (torch.int8, 0, (-8, 7)), (torch.uint8, 0, (0, 15))])
def test_conv_requantized_output(isa, out_dtype, zp, qrange):
    """The runtime's conv: uint8 activations with a zero point, per-channel weights, bias, ReLU,
    requantised for the next layer (also to a 4-bit range)."""
    x = rand_int((2, 8, 8, 16), 0, 255, torch.uint8)
    w = rand_int((24, 3, 3, 16), -127, 127, torch.int8)
    sw = torch.rand(24) * 0.002 + 1e-4
    bias = torch.randn(24) * 0.5
    ep = Epilogue(weight_scale=sw, act_scale=0.02, act_zero_point=100, bias=bias, activation="relu",
                  out_dtype=out_dtype, out_scale=0.037, out_zero_point=zp, quant_min=qrange[0], quant_max=qrange[1])
    out = run_cpu(ops.qconv2d_nhwc, x, w, 1, 1, epilogue=ep, pad_value=100)
    assert out.dtype == out_dtype and out.shape == (2, 8, 8, 24)
    prod = conv_ref(x, w, (1, 1), (1, 1), (1, 1), 1, 100, 100)
    m = prod.numel() // 24
    v, mag = epilogue_expected(prod, m, 24, sa=0.02, sw=sw, bias=bias, act="relu")
    check_requant(out, v, 0.037, zp, *qrange, mag)


def test_requant_power_of_two_scales_bit_exact(isa):
    """Power-of-two scales make every float step exact: ties must round half to even."""
    m, n, k = 31, 19, 40
    a, w = rand_int((m, k), -128, 127, torch.int8), rand_int((n, k), -128, 127, torch.int8)
    ep = Epilogue(weight_scale=2.0 ** -4, act_scale=2.0 ** -3, out_dtype=torch.int8, out_scale=2.0 ** -1,
                  out_zero_point=-3, residual=rand_int((m, n), -128, 127, torch.int8), residual_scale=0.5,
                  residual_zero_point=1)
    out = run_cpu(ops.qgemm, a, w, ep)
    v = gemm_ref(a, w).double() * 2.0 ** -7 + (ep.residual.double() - 1) * 0.5
    want = (torch.round(v / 0.5) - 3).clamp(-128, 127).to(torch.int8)
    assert torch.equal(out, want)


@pytest.mark.parametrize("act", ["none", "relu", "relu6"])
@pytest.mark.parametrize("out_dtype,zp", [(torch.int8, -3), (torch.uint8, 9)])
@pytest.mark.parametrize("adtype", [torch.int8, torch.uint8])
def test_requant_tile_path_bit_exact(isa, act, out_dtype, zp, adtype):
    """The one-pass requantising epilogue (int8/uint8 out, no weight zero point, no residual):
    per-row activation scales, per-channel weight scales, bias, every activation, a column
    tail (N = 37), int8 activations (their +128 column correction) or uint8 with a zero point.
    Power-of-two scales and bias on a 1/8 grid make every float step exact, so ties must round
    half to even and the result must equal the reference bit for bit."""
    m, n, k = 13, 37, 40
    lo, hi, za = (-128, 127, 0) if adtype == torch.int8 else (0, 255, 77)
    a, w = rand_int((m, k), lo, hi, adtype), rand_int((n, k), -128, 127, torch.int8)
    sa = 2.0 ** -torch.randint(3, 7, (m,)).float()
    sw = 2.0 ** -torch.randint(5, 9, (n,)).float()
    bias = torch.randint(-40, 41, (n,)).float() / 8
    ep = Epilogue(weight_scale=sw, act_scale=sa, act_zero_point=za, bias=bias, activation=act,
                  out_dtype=out_dtype, out_scale=0.25, out_zero_point=zp)
    out = run_cpu(ops.qgemm, a, w, ep)
    v, _ = epilogue_expected(gemm_ref(a, w, za), m, n, sa=sa, sw=sw, bias=bias, act=act)
    qmin, qmax = (-128, 127) if out_dtype == torch.int8 else (0, 255)
    want = (torch.round(v / 0.25) + zp).clamp(qmin, qmax).to(out_dtype)
    assert torch.equal(out, want)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("residual", [False, True])
def test_depthwise_epilogues(out_dtype, residual):
    c = 32
    x = rand_int((2, 7, 7, c), 0, 255, torch.uint8)
    w = rand_int((c, 3, 3, 1), -127, 127, torch.int8)
    zw = torch.randint(-2, 3, (c,), dtype=torch.int32)
    sw = torch.rand(c) * 0.01 + 1e-3
    bias = torch.randn(c)
    res = torch.randn(2, 4, 4, c) if residual else None
    kw = dict(out_scale=0.05, out_zero_point=10) if out_dtype == torch.uint8 else {}
    ep = Epilogue(weight_scale=sw, act_scale=0.03, act_zero_point=128, weight_zero_point=zw, bias=bias,
                  residual=res, activation="relu6", out_dtype=out_dtype, **kw)
    out = run_cpu(ops.qconv2d_nhwc, x, w, 2, 1, 1, c, epilogue=ep, pad_value=128)
    prod = conv_ref(x, w, (2, 2), (1, 1), (1, 1), c, 128, 128, zw)
    m = prod.numel() // c
    v, mag = epilogue_expected(prod, m, c, sa=0.03, sw=sw, bias=bias, residual=res, act="relu6")
    if out_dtype == torch.uint8:
        check_requant(out, v, 0.05, 10, 0, 255, mag)
    else:
        check_float_out(out.reshape(m, c), v, mag, out_dtype)


# ------------------------------------------------------------------------- weight-pack cache

def test_pack_cache_sees_in_place_writes():
    from zsq_engine.ops.int_gemm import cpu as int_gemm_cpu

    x = rand_int((1, 6, 6, 8), -128, 127, torch.int8)
    w = rand_int((5, 3, 3, 8), -128, 127, torch.int8)
    first = run_cpu(ops.qconv2d_nhwc, x, w, 1, 1)
    assert int_gemm_cpu.cached_pack(w) is int_gemm_cpu.cached_pack(w)  # reused while unchanged
    w[2, 1, 1, 3] = -w[2, 1, 1, 3] - 1  # in-place write: bumps the version counter
    second = run_cpu(ops.qconv2d_nhwc, x, w, 1, 1)
    assert not torch.equal(first, second)
    assert torch.equal(second, conv_ref(x, w, (1, 1), (1, 1), (1, 1), 1, 0).int())

    a, wg = rand_int((4, 10), -128, 127, torch.int8), rand_int((6, 10), -128, 127, torch.int8)
    run_cpu(ops.qgemm, a, wg)
    with torch.no_grad():
        wg.add_(1).clamp_(-128, 127)
    assert torch.equal(run_cpu(ops.qgemm, a, wg), gemm_ref(a, wg).int())
    b = wg.t().contiguous()
    run_cpu(ops.int_mm, a, b)
    b.copy_(rand_int(b.shape, -128, 127, torch.int8))
    assert torch.equal(run_cpu(ops.int_mm, a, b), (a.long() @ b.long()).int())


def test_pack_cache_distinguishes_tensors_sharing_storage():
    """Two views of one buffer with different shapes must not share packed panels."""
    from zsq_engine.ops.int_gemm import cpu as int_gemm_cpu

    buf = rand_int((12, 8), -128, 127, torch.int8)
    p1 = int_gemm_cpu.cached_pack(buf)
    p2 = int_gemm_cpu.cached_pack(buf.view(24, 4))
    assert (p1.n, p1.k) == (12, 8) and (p2.n, p2.k) == (24, 4)


def test_packed_weight_matches_layout():
    """The panels are the documented re-layout [groups][N_g/16][K/4][16][4] with zero padding."""
    from zsq_engine.ops.int_gemm import cpu as int_gemm_cpu

    n, k = 18, 6
    w = rand_int((n, k), -128, 127, torch.int8)
    p = int_gemm_cpu.pack_weight(w)
    assert p.panels.shape == (1, 2, 2, 16, 4)
    padded = torch.zeros(32, 8, dtype=torch.int8)
    padded[:n, :k] = w
    expect = padded.reshape(2, 16, 2, 4).permute(0, 2, 1, 3).unsqueeze(0)
    assert torch.equal(p.panels, expect)
    assert torch.equal(p.colsum, w.int().sum(1))


# ------------------------------------------------------------------------------- bad input

def _ep0():
    return _C.IntEpilogue()  # the plain int32 accumulator


def test_binding_errors_name_the_argument():
    w = rand_int((8, 10), -8, 7, torch.int8)
    with pytest.raises(RuntimeError, match="w must be int8"):
        _C.int_pack_weight_cpu(w.float(), 1, False, 10)
    with pytest.raises(RuntimeError, match="packed int4 w must be uint8"):
        _C.int_pack_weight_cpu(w, 1, True, 10)  # unpacked int4 values given as packed
    with pytest.raises(RuntimeError, match="does not hold k=10"):
        _C.int_pack_weight_cpu(ops.pack_int4(w)[:, :4].contiguous(), 1, True, 10)
    with pytest.raises(RuntimeError, match="needs w_int4=True"):
        _C.int_pack_weight_cpu(ops.pack_int4(w), 1, False, 5)
    with pytest.raises(RuntimeError, match="groups=3"):
        _C.int_pack_weight_cpu(w, 3, False, 10)
    panels, colsum = _C.int_pack_weight_cpu(w, 1, False, 10)
    a = rand_int((4, 10), -128, 127, torch.int8)
    with pytest.raises(RuntimeError, match="a must be"):
        _C.int_gemm_cpu(a.to(torch.uint8), "int8", 10, panels, colsum, 8, _ep0())
    with pytest.raises(RuntimeError, match="a has 9 columns"):
        _C.int_gemm_cpu(a[:, :9].contiguous(), "int8", 10, panels, colsum, 8, _ep0())
    with pytest.raises(RuntimeError, match="panels has shape"):
        _C.int_gemm_cpu(a, "int8", 10, panels, colsum, 20, _ep0())
    with pytest.raises(RuntimeError, match="isa"):
        _C.int_gemm_cpu(a, "int8", 10, panels, colsum, 8, _ep0(), isa="sse9")
    with pytest.raises(RuntimeError, match="only zero points"):
        _C.IntEpilogue(out_dtype=torch.int32, weight_scale=torch.ones(8), act_scale=torch.ones(1))
    with pytest.raises(RuntimeError, match="quant range"):
        _C.IntEpilogue(out_dtype=torch.int8, weight_scale=torch.ones(8), act_scale=torch.ones(1), quant_min=-200,
                       quant_max=127)
    # the typed epilogue: names, not codes, and its sizes checked against the call
    with pytest.raises(RuntimeError, match="activation must be 'none', 'relu' or 'relu6'"):
        _C.IntEpilogue(out_dtype=torch.float32, weight_scale=torch.ones(8), act_scale=torch.ones(1), activation="gelu")
    with pytest.raises(RuntimeError, match="a_format must be"):
        _C.int_gemm_cpu(a, "int7", 10, panels, colsum, 8, _ep0())
    with pytest.raises(RuntimeError, match="weight_scale must have 8 elements or 1"):
        _C.int_gemm_cpu(a, "int8", 10, panels, colsum, 8,
                        _C.IntEpilogue(out_dtype=torch.float32, weight_scale=torch.ones(5), act_scale=torch.ones(1)))
    with pytest.raises(RuntimeError, match="without a residual"):
        _C.int_gemm_cpu(a, "int8", 10, panels, colsum, 8,
                        _C.IntEpilogue(out_dtype=torch.float32, weight_scale=torch.ones(8), act_scale=torch.ones(1)),
                        torch.zeros(4, 8))
    with pytest.raises(RuntimeError, match="kind must be 'conv', 'depthwise' or 'gemm'"):
        _C.IntPreparedCpu("dense", panels, colsum, 8, 10, 1, 1, [1, 1, 0, 0, 1, 1], 1, 0, _ep0())
    with pytest.raises(RuntimeError, match="a codes output runs only in a prepared call"):
        _C.int_gemm_cpu(a, "int8", 10, panels, colsum, 8,
                        _C.IntEpilogue(out_dtype=torch.float32, weight_scale=torch.ones(8), act_scale=torch.ones(1),
                                       codes_dtype=torch.uint8, codes_inv_scale=2.0, codes_max=255))
    bound = _C.IntEpilogue(out_dtype=torch.float16, weight_scale=torch.ones(8), act_scale=torch.ones(1),
                           activation="relu6", residual_dtype=torch.int8)
    assert (bound.out_dtype, bound.activation, bound.residual_dtype, bound.codes_dtype) == (
        torch.float16, "relu6", torch.int8, None)
    x = rand_int((1, 5, 5, 4), -128, 127, torch.int8)
    with pytest.raises(RuntimeError, match="x must be a 4-D NHWC"):
        _C.int_conv2d_nhwc_cpu(x[0], panels, colsum, 8, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, _ep0())
    with pytest.raises(RuntimeError, match="pad_value=200"):
        _C.int_depthwise_conv2d_nhwc_cpu(x, rand_int((4, 3, 3, 1), -1, 1, torch.int8), 1, 1, 1, 1, 1, 1, 200,
                                         _ep0())
    with pytest.raises(RuntimeError, match="channels"):
        _C.int_depthwise_conv2d_nhwc_cpu(x, rand_int((5, 3, 3, 1), -1, 1, torch.int8), 1, 1, 1, 1, 1, 1, 0,
                                         _ep0())


def test_isa_env_errors(monkeypatch):
    a, w = rand_int((2, 4), -128, 127, torch.int8), rand_int((3, 4), -128, 127, torch.int8)
    monkeypatch.setenv("ZSQ_CPU_INT_ISA", "sse9")
    with pytest.raises(ValueError, match="ZSQ_CPU_INT_ISA"):
        run_cpu(ops.qgemm, a, w)
    missing = [i for i in ALL_ISAS if i not in _supported_isas()]
    if missing:
        monkeypatch.setenv("ZSQ_CPU_INT_ISA", missing[0])
        with pytest.raises(RuntimeError, match="not supported by this CPU"):
            run_cpu(ops.qgemm, a, w)


def test_int8_peak_probe():
    """The benchmarks' hardware limit: positive with VNNI, 0 without; bad durations rejected."""
    peak = _C.int8_peak_gmacs_cpu(0.02)
    assert (peak > 0) == ("avx512_vnni" in _supported_isas())
    with pytest.raises(RuntimeError, match="seconds"):
        _C.int8_peak_gmacs_cpu(0.0)
