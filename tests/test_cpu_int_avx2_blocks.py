"""The AVX2 path of the C++ CPU integer GEMM / conv (csrc/cpu/int_gemm_avx2.cpp), called with
isa="avx2" explicitly so it runs on an AVX-512 host too, against int64 arithmetic written out here.

The AVX2 driver widens the gathered u8 tile to u16 and each 16-channel weight panel to int16
k-pairs, then runs 6-row x 16-channel register blocks over the work item's rows; the cases
below go after its edges: K not a multiple of the k-pair / k-group (1, 2, 3, 5, 7, ...), row
counts that leave 1-5 rows in the last block and row tiles that split M, channel counts that
leave partial panels and partial 64-column chunks, several chunks per item and N split across
threads, int4 weights, int8 / uint8 / int4 / uint4 activations, activation and weight zero
points, conv padding values, strides, groups and the 7x7 C=3 stem shape, extreme operands and
int32 wrap-around. int32 outputs are compared exactly with the int64 oracle (mod 2^32);
requantised outputs bit for bit with the scalar micro-kernel (the same epilogue code) and
within a rounding tie of the fp64 oracle.
"""
import pytest
import torch

from _support.integer import (check_requant, conv_ref, epilogue_expected, gemm_ref, int32_epilogue, pack_panels,
                              rand_int, threads)  # noqa: F401 (threads: a fixture)
from zsq_engine import ops
from zsq_engine._ext import get_extension

_C = get_extension()
HAS_AVX2 = _C is not None and hasattr(_C, "int_isas_cpu") and "avx2" in _C.int_isas_cpu()
pytestmark = pytest.mark.skipif(not HAS_AVX2, reason="no C++ extension or no AVX2 on this CPU")

AVX2, SCALAR = "avx2", "scalar"


def _int32_ep(za=0, zw=None):
    return int32_epilogue(_C, za, zw)


def _wrap32(v):
    """int64 -> the int32 two's-complement value of v mod 2^32."""
    v = v & 0xFFFFFFFF
    return torch.where(v >= 2 ** 31, v - 2 ** 32, v).to(torch.int32)


def _pack(w2d, groups=1, w_int4=False):
    return pack_panels(_C, w2d, groups, w_int4)


# ----------------------------------------------------------------------------------- GEMM

@pytest.mark.parametrize("m,n,k", [
    (1, 1, 1), (1, 16, 2), (2, 17, 3), (3, 15, 5), (4, 33, 7), (5, 64, 8), (6, 65, 9),
    (7, 16, 63), (11, 48, 64), (12, 80, 65), (13, 130, 131), (97, 20, 30), (150, 70, 2001),
])
def test_gemm_int8_blocks_exact(threads, m, n, k):
    a = rand_int((m, k), -128, 127, torch.int8)
    w = rand_int((n, k), -128, 127, torch.int8)
    panels, colsum = _pack(w)
    out = _C.int_gemm_cpu(a, "int8", k, panels, colsum, n, _int32_ep(), isa=AVX2)
    assert torch.equal(out, gemm_ref(a, w).to(torch.int32))


@pytest.mark.parametrize("a_kind", ["int8", "uint8"])
@pytest.mark.parametrize("m,n,k", [(9, 21, 11), (31, 40, 6), (64, 100, 37)])
def test_gemm_zero_points_exact(threads, a_kind, m, n, k):
    """Activation zero point with per-channel weight zero points: the row sums of the widened
    tile's source and the column sums of the panels must both come out right."""
    lo, hi = (-128, 127) if a_kind == "int8" else (0, 255)
    a = rand_int((m, k), lo, hi, getattr(torch, a_kind))
    w = rand_int((n, k), -128, 127, torch.int8)
    za = -7 if a_kind == "int8" else 131
    zw = torch.randint(-5, 6, (n,), dtype=torch.int32)
    panels, colsum = _pack(w)
    out = _C.int_gemm_cpu(a, a_kind, k, panels, colsum, n, _int32_ep(za, zw), isa=AVX2)
    assert torch.equal(out, gemm_ref(a, w, za, zw).to(torch.int32))


@pytest.mark.parametrize("act", ["int8", "uint8", "int4", "uint4"])
@pytest.mark.parametrize("k", [1, 6, 13, 40])
def test_gemm_int4_weights_every_activation(act, k):
    m, n = 14, 19
    w = rand_int((n, k), -8, 7, torch.int8)
    w[0] = -8  # the extreme codes, in full rows
    w[1] = 7
    if act in ("int8", "uint8"):
        lo, hi = (-128, 127) if act == "int8" else (0, 255)
        a = rand_int((m, k), lo, hi, getattr(torch, act))
        a_arg, kind = a, act
    else:
        lo, hi = (-8, 7) if act == "int4" else (0, 15)
        a = rand_int((m, k), lo, hi, torch.int8 if act == "int4" else torch.uint8)
        a_arg, kind = ops.pack_int4(a), act
    panels, colsum = _pack(w, w_int4=True)
    out = _C.int_gemm_cpu(a_arg, kind, k, panels, colsum, n, _int32_ep(), isa=AVX2)
    assert torch.equal(out, gemm_ref(a, w).to(torch.int32))


def test_gemm_extremes_and_int32_wraparound():
    """All-255 activations against all -128 weights: the largest vpmaddwd pair sums, and a K
    long enough that the int32 accumulator wraps (it must wrap exactly like int64 mod 2^32)."""
    k = 70001
    a = torch.full((7, k), 255, dtype=torch.uint8)
    a[1, ::3] = 0
    w = torch.full((18, k), -128, dtype=torch.int8)
    w[3] = 127
    w[5, ::2] = 127
    panels, colsum = _pack(w)
    out = _C.int_gemm_cpu(a, "uint8", k, panels, colsum, 18, _int32_ep(), isa=AVX2)
    ref = gemm_ref(a, w)
    assert ref.abs().max() >= 2 ** 31  # the case does wrap
    assert torch.equal(out, _wrap32(ref))


@pytest.mark.parametrize("m,n,k", [(1, 40, 9), (8, 96, 100), (100, 33, 70)])
def test_gemm_requant_matches_scalar_and_reference(threads, m, n, k):
    """The AVX2 driver finishes all rows of a chunk in one epilogue call: same bytes as the
    scalar micro-kernel path, within a rounding tie of fp64."""
    a = rand_int((m, k), -128, 127, torch.int8)
    w = rand_int((n, k), -128, 127, torch.int8)
    panels, colsum = _pack(w)
    sw = torch.rand(n) * 1e-3 + 1e-4
    sa = torch.rand(m) * 0.05 + 0.01
    bias = torch.randn(n)
    ep = _C.IntEpilogue(out_dtype=torch.int8, act_zero_point=3, weight_scale=sw, act_scale=sa, bias=bias,
                        activation="relu", out_scale=0.25, out_zero_point=-5, quant_min=-128, quant_max=127)
    out = _C.int_gemm_cpu(a, "int8", k, panels, colsum, n, ep, isa=AVX2)
    assert torch.equal(out, _C.int_gemm_cpu(a, "int8", k, panels, colsum, n, ep, isa=SCALAR))
    v, mag = epilogue_expected(gemm_ref(a, w, 3), m, n, sa=sa.reshape(-1, 1), sw=sw, bias=bias, act="relu")
    check_requant(out, v, 0.25, -5, -128, 127, mag)


# ----------------------------------------------------------------------------------- conv

@pytest.mark.parametrize("kh,kw,stride,pad,dil,groups,c,o,hw", [
    (7, 7, 2, 3, 1, 1, 3, 20, 19),    # the stem: K = 147 (odd, not a multiple of 4)
    (3, 3, 1, 1, 1, 1, 5, 17, 9),     # K = 45
    (3, 3, 2, 1, 1, 1, 16, 33, 11),
    (1, 1, 2, 0, 1, 1, 24, 40, 9),    # a strided 1x1 downsample
    (3, 3, 1, 2, 2, 1, 6, 16, 8),     # dilated: per-tap gather
    (3, 3, 1, 1, 1, 2, 14, 30, 7),    # grouped: K = 63 per group, 15 channels per group
    (5, 3, 1, (2, 1), 1, 1, 3, 9, 10),
])
@pytest.mark.parametrize("x_kind", ["int8", "uint8"])
def test_conv_blocks_exact_with_pad_value(threads, kh, kw, stride, pad, dil, groups, c, o, hw, x_kind):
    lo, hi = (-128, 127) if x_kind == "int8" else (0, 255)
    x = rand_int((2, hw, hw + 1, c), lo, hi, getattr(torch, x_kind))
    w = rand_int((o, kh, kw, c // groups), -128, 127, torch.int8)
    ph, pw = pad if isinstance(pad, tuple) else (pad, pad)
    pad_value = -3 if x_kind == "int8" else 200  # the activation zero point
    za = pad_value
    zw = torch.randint(-3, 4, (o,), dtype=torch.int32)
    panels, colsum = _pack(w.reshape(o, -1), groups)
    out = _C.int_conv2d_nhwc_cpu(x, panels, colsum, o, kh, kw, stride, stride, ph, pw, dil, dil, groups,
                                 pad_value, _int32_ep(za, zw), isa=AVX2)
    ref = conv_ref(x, w, (stride, stride), (ph, pw), (dil, dil), groups, pad_value, za, zw)
    assert torch.equal(out, ref.to(torch.int32))


def test_conv_int4_weights_and_requant_match_scalar(threads):
    x = rand_int((1, 13, 12, 10), -128, 127, torch.int8)
    w = rand_int((36, 3, 3, 10), -8, 7, torch.int8)
    panels, colsum = _pack(w.reshape(36, -1), w_int4=True)
    geo = (36, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0)
    out = _C.int_conv2d_nhwc_cpu(x, panels, colsum, *geo, _int32_ep(), isa=AVX2)
    assert torch.equal(out, conv_ref(x, w, (1, 1), (1, 1), (1, 1), 1, 0).to(torch.int32))
    sw = torch.rand(36) * 1e-2 + 1e-3
    ep = _C.IntEpilogue(out_dtype=torch.uint8, weight_scale=sw, act_scale=torch.tensor([0.02]), bias=torch.randn(36),
                        activation="relu6", out_scale=0.05, out_zero_point=10, quant_min=0, quant_max=255)
    q = _C.int_conv2d_nhwc_cpu(x, panels, colsum, *geo, ep, isa=AVX2)
    assert torch.equal(q, _C.int_conv2d_nhwc_cpu(x, panels, colsum, *geo, ep, isa=SCALAR))
