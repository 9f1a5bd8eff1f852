"""The narrow-weight AVX2 path of the C++ CPU integer GEMM / conv (vpmaddubsw, csrc/cpu/
int_gemm_avx2.cpp), forced with isa="avx2" as in test_cpu_int_avx2_blocks.py, against int64 arithmetic.

The driver checks each packed 16-channel panel: with P the largest |w_a| + |w_b| over the weight
pairs vpmaddubsw sums, S = floor(32767 / (255 P)) k-groups can be summed exactly in int16 (P <=
128 is exact at all); when S >= 2 (P <= 64; S = 1 is exact but slower) it multiplies the u8 tile
by the int8 panel in place, S k-groups per int16 run; otherwise the panel takes the vpmaddwd
kernels (so do work items of fewer than 4 rows, where the bound scan costs more than
it saves; the cases with 1-3 rows check that those stay exact). The cases go after the bound from both sides with the operands that reach it
(all-255 activations, weights of one sign), int4 weights (W4A8 / W4A4), K tails, partial row
blocks and panels, panels of one layer on different sides of the bound, 1 / 2 threads, conv and
GEMM, int8 / uint8 activations and zero points. A small numpy model of the instruction sequence
shows that the cases above the bound would come out wrong on the narrow kernel, so that the
fallback is what keeps them exact.
"""
import numpy as np
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


def _pack(w2d, groups=1, w_int4=False):
    return pack_panels(_C, w2d, groups, w_int4)


def _steps(max_pair):
    """k-groups the driver sums in int16 for a panel whose largest |w_a| + |w_b| is max_pair."""
    return 32767 // (255 * max_pair)


def _sat16(v):
    return np.clip(v, -32768, 32767)


def _wrap16(v):
    return (v + 32768) % 65536 - 32768


def _narrow_model(u, w, steps):
    """The narrow kernel's arithmetic for one row u (u8 codes, K) and weights w [N, K]:
    vpmaddubsw pair sums (saturating), `steps` k-groups added in int16 (wrapping), widened."""
    k = u.shape[0]
    kp = -(-k // 4) * 4
    u = np.pad(u.astype(np.int64), (0, kp - k))
    w = np.pad(w.astype(np.int64), ((0, 0), (0, kp - k)))
    prod = u[None, :] * w
    pairs = _sat16(prod[:, 0::2] + prod[:, 1::2])  # [N, kp / 2]: (k0, k1), (k2, k3), ...
    lanes = [pairs[:, 0::2], pairs[:, 1::2]]  # the two int16 lanes of each channel
    total = np.zeros(w.shape[0], dtype=np.int64)
    for lane in lanes:
        for g0 in range(0, lane.shape[1], steps):
            total += _wrap16(lane[:, g0:g0 + steps].sum(axis=1))
    return total


def _one_sign_weights(n, k, max_pair, sign):
    """Weights whose every k-pair sums to max_pair in magnitude, all of one sign: with all-255
    activations each int16 sum of the narrow kernel reaches steps * 255 * max_pair."""
    hi, lo = max_pair - max_pair // 2, max_pair // 2
    w = torch.empty((n, k), dtype=torch.int16)
    w[:, 0::2] = hi
    w[:, 1::2] = lo
    return (w * sign).to(torch.int8)


# ---------------------------------------------------------------------- the model itself

@pytest.mark.parametrize("max_pair", [16, 42, 43, 64, 128])
def test_model_exact_at_bound(max_pair):
    """The proof, checked on its worst case: at the driver's step count the modelled kernel is
    exact; one more step overflows int16 (the count is the largest that is safe)."""
    k = 4 * (_steps(max_pair) + 1) * 3
    u = np.full(k, 255)
    for sign in (1, -1):
        w = _one_sign_weights(3, k, max_pair, sign).numpy()
        exact = (u[None, :].astype(np.int64) * w).sum(axis=1)
        assert np.array_equal(_narrow_model(u, w, _steps(max_pair)), exact)
        if sign == 1 and _steps(max_pair) + 1 <= k // 4:
            assert not np.array_equal(_narrow_model(u, w, _steps(max_pair) + 1), exact)


# ----------------------------------------------------------------------------------- GEMM

@pytest.mark.parametrize("m,n,k", [
    (1, 16, 1), (2, 17, 3), (3, 15, 5), (4, 33, 31), (5, 64, 32), (6, 65, 33), (7, 16, 63),
    (8, 24, 40), (9, 31, 100), (13, 130, 131), (97, 20, 257), (150, 70, 1000),
])
@pytest.mark.parametrize("act", ["int8", "uint8"])
def test_gemm_w4a8_exact(threads, m, n, k, act):
    lo, hi = (-128, 127) if act == "int8" else (0, 255)
    a = rand_int((m, k), lo, hi, getattr(torch, act))
    w = rand_int((n, k), -8, 7, torch.int8)
    w[0] = -8  # full rows of the extreme code: the largest int4 pair (16), 8 k-groups in int16
    a[0] = hi
    panels, colsum = _pack(w, w_int4=True)
    out = _C.int_gemm_cpu(a, act, k, panels, colsum, n, _int32_ep(), isa=AVX2)
    assert torch.equal(out, gemm_ref(a, w).to(torch.int32))


@pytest.mark.parametrize("act", ["int4", "uint4"])
@pytest.mark.parametrize("m,n,k", [(1, 10, 7), (4, 17, 9), (6, 40, 64), (31, 33, 290)])
def test_gemm_w4a4_exact(threads, act, m, n, k):
    lo, hi = (-8, 7) if act == "int4" else (0, 15)
    a = rand_int((m, k), lo, hi, torch.int8 if act == "int4" else torch.uint8)
    w = rand_int((n, k), -8, 7, torch.int8)
    w[1] = -8
    panels, colsum = _pack(w, w_int4=True)
    out = _C.int_gemm_cpu(ops.pack_int4(a), act, k, panels, colsum, n, _int32_ep(), isa=AVX2)
    assert torch.equal(out, gemm_ref(a, w).to(torch.int32))


@pytest.mark.parametrize("max_pair", [16, 42, 43, 64, 65, 127, 128])
@pytest.mark.parametrize("m", [4, 7, 8])
def test_gemm_worst_case_at_bound_exact(threads, max_pair, m):
    """All-255 activations and one-sign weights whose pairs sum to the largest value of their
    panel: every int16 sum of the narrow kernel is at its bound (P <= 64: S >= 2). P = 65 (S = 1)
    and the exactness bound itself, |w| = 64 pairs (P = 128), take the vpmaddwd kernel."""
    k = 4 * 3 * max(_steps(max_pair), 1) + 5
    a = torch.full((m, k), 255, dtype=torch.uint8)
    w = torch.cat([_one_sign_weights(16, k, max_pair, 1), _one_sign_weights(16, k, max_pair, -1)])
    w[5, 1] = 0  # a pair below the max does not change the step count
    panels, colsum = _pack(w)
    out = _C.int_gemm_cpu(a, "uint8", k, panels, colsum, 32, _int32_ep(), isa=AVX2)
    assert torch.equal(out, gemm_ref(a, w).to(torch.int32))


@pytest.mark.parametrize("pair", [(127, 1), (-128, 0), (1, 127), (-64, -64)])
def test_gemm_lopsided_pairs_at_bound_exact(threads, pair):
    """Pairs of 128 made of one large weight and a small one, next to |w| = 64 pairs (exact on
    vpmaddubsw with one k-group per run; the driver takes vpmaddwd there, see the module doc)."""
    k = 24
    a = torch.full((8, k), 255, dtype=torch.uint8)
    w = torch.full((17, k), 64, dtype=torch.int8)
    w[2, 0::2], w[2, 1::2] = pair
    w[9, 4], w[9, 5] = pair
    panels, colsum = _pack(w)
    out = _C.int_gemm_cpu(a, "uint8", k, panels, colsum, 17, _int32_ep(), isa=AVX2)
    assert torch.equal(out, gemm_ref(a, w).to(torch.int32))


@pytest.mark.parametrize("pair", [(65, 64), (-65, -64), (-128, -1), (127, 2), (33, 32)])
@pytest.mark.parametrize("m", [5, 9])
def test_gemm_just_above_bound_falls_back_exact(threads, pair, m):
    """One pair of |w_a| + |w_b| = 129 (or 65) in a panel of narrow weights: the narrow kernel with
    the step count of the other pairs (2 k-groups) would go wrong on it (checked on the model),
    so the panel must take vpmaddwd and stay exact."""
    k = 40
    a = torch.full((m, k), 255, dtype=torch.uint8)
    w = rand_int((20, k), -30, 30, torch.int8)
    w[3, 8], w[3, 9] = pair
    w[3, 10], w[3, 11] = pair
    w[3, 12], w[3, 13] = pair
    assert not np.array_equal(_narrow_model(a[0].numpy(), w[3:4].numpy(), 2),
                              gemm_ref(a[:1], w[3:4]).numpy()[0])
    panels, colsum = _pack(w)
    out = _C.int_gemm_cpu(a, "uint8", k, panels, colsum, 20, _int32_ep(), isa=AVX2)
    assert torch.equal(out, gemm_ref(a, w).to(torch.int32))


@pytest.mark.parametrize("m", [4, 50])
def test_gemm_panels_on_both_sides_of_bound(threads, m):
    """Panels of one layer take different kernels (narrow, int4-like, full range) and their
    results meet in the same 64-column chunk and epilogue; int8 activations with zero points."""
    k = 77
    a = rand_int((m, k), -128, 127, torch.int8)
    a[0] = -128  # u = 0 and u = 255 rows
    a[1] = 127
    w = torch.cat([rand_int((16, k), -32, 32, torch.int8), rand_int((16, k), -128, 127, torch.int8),
                   rand_int((16, k), -8, 7, torch.int8), rand_int((9, k), -128, 127, torch.int8)])
    w[:16, 0::2] = 32  # P = 64: 2 k-groups per int16 run
    za = 5
    zw = torch.randint(-3, 4, (w.shape[0],), dtype=torch.int32)
    panels, colsum = _pack(w)
    out = _C.int_gemm_cpu(a, "int8", k, panels, colsum, w.shape[0], _int32_ep(za, zw), isa=AVX2)
    assert torch.equal(out, gemm_ref(a, w, za, zw).to(torch.int32))


@pytest.mark.parametrize("m,n,k", [(1, 40, 9), (4, 20, 33), (30, 70, 300)])
def test_gemm_w4a8_requant_matches_scalar_and_reference(threads, m, n, k):
    a = rand_int((m, k), 0, 255, torch.uint8)
    w = rand_int((n, k), -8, 7, torch.int8)
    panels, colsum = _pack(w, w_int4=True)
    sw = torch.rand(n) * 1e-2 + 1e-3
    sa = torch.rand(m) * 0.05 + 0.01
    bias = torch.randn(n)
    ep = _C.IntEpilogue(out_dtype=torch.uint8, act_zero_point=100, weight_scale=sw, act_scale=sa, bias=bias,
                        activation="relu", out_scale=0.5, out_zero_point=3, quant_min=0, quant_max=255)
    out = _C.int_gemm_cpu(a, "uint8", k, panels, colsum, n, ep, isa=AVX2)
    assert torch.equal(out, _C.int_gemm_cpu(a, "uint8", k, panels, colsum, n, ep, isa=SCALAR))
    v, mag = epilogue_expected(gemm_ref(a, w, 100), m, n, sa=sa.reshape(-1, 1), sw=sw, bias=bias, act="relu")
    check_requant(out, v, 0.5, 3, 0, 255, mag)


# ----------------------------------------------------------------------------------- conv

@pytest.mark.parametrize("kh,kw,stride,pad,c,o,hw", [
    (7, 7, 2, 3, 3, 20, 19),   # stem shape: K = 147
    (3, 3, 1, 1, 16, 33, 9),   # K = 144, more than 8 k-groups per int16 sum
    (1, 1, 2, 0, 24, 40, 9),
])
@pytest.mark.parametrize("x_kind", ["int8", "uint8"])
def test_conv_w4_exact(threads, kh, kw, stride, pad, c, o, hw, x_kind):
    lo, hi = (-128, 127) if x_kind == "int8" else (0, 255)
    x = rand_int((2, hw, hw + 1, c), lo, hi, getattr(torch, x_kind))
    w = rand_int((o, kh, kw, c), -8, 7, torch.int8)
    w[0] = -8
    pad_value = -3 if x_kind == "int8" else 200
    zw = torch.randint(-2, 3, (o,), dtype=torch.int32)
    panels, colsum = _pack(w.reshape(o, -1), w_int4=True)
    out = _C.int_conv2d_nhwc_cpu(x, panels, colsum, o, kh, kw, stride, stride, pad, pad, 1, 1, 1,
                                 pad_value, _int32_ep(pad_value, zw), isa=AVX2)
    ref = conv_ref(x, w, (stride, stride), (pad, pad), (1, 1), 1, pad_value, pad_value, zw)
    assert torch.equal(out, ref.to(torch.int32))


@pytest.mark.parametrize("above", [False, True])
@pytest.mark.parametrize("v", [32, 64])
def test_conv_int8_weights_at_and_above_bound(threads, v, above):
    """A grouped 3x3 conv whose weights are all +-v on all-255 input: v = 32 puts every int16 run
    of the narrow kernel (2 k-groups) at its bound, v = 64 is the exactness bound of one
    vpmaddubsw (vpmaddwd runs it); with one pair of -(v + 1), -v in one group, that group's
    panel falls back."""
    c, o, groups = 16, 32, 2
    x = torch.full((1, 6, 7, c), 255, dtype=torch.uint8)
    w = torch.full((o, 3, 3, c // groups), v, dtype=torch.int8)
    w[o // 2:] = -v
    if above:
        w[20, 1, 1, 2], w[20, 1, 1, 3] = -(v + 1), -v
    panels, colsum = _pack(w.reshape(o, -1), groups)
    out = _C.int_conv2d_nhwc_cpu(x, panels, colsum, o, 3, 3, 1, 1, 1, 1, 1, 1, groups, 0,
                                 _int32_ep(), isa=AVX2)
    assert torch.equal(out, conv_ref(x, w, (1, 1), (1, 1), (1, 1), groups, 0).to(torch.int32))


def test_conv_w4_requant_matches_scalar(threads):
    x = rand_int((1, 15, 14, 32), -128, 127, torch.int8)
    w = rand_int((48, 3, 3, 32), -8, 7, torch.int8)
    panels, colsum = _pack(w.reshape(48, -1), w_int4=True)
    geo = (48, 3, 3, 2, 2, 1, 1, 1, 1, 1, -4)
    sw = torch.rand(48) * 1e-2 + 1e-3
    ep = _C.IntEpilogue(out_dtype=torch.int8, act_zero_point=-4, weight_scale=sw, act_scale=torch.tensor([0.02]),
                        bias=torch.randn(48), activation="relu", out_scale=0.05, out_zero_point=-10, quant_min=-128,
                        quant_max=127)
    q = _C.int_conv2d_nhwc_cpu(x, panels, colsum, *geo, ep, isa=AVX2)
    assert torch.equal(q, _C.int_conv2d_nhwc_cpu(x, panels, colsum, *geo, ep, isa=SCALAR))
