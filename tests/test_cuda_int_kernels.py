"""The CUDA depthwise int8 conv with dp4a (csrc/cuda/depthwise_dp4a.cu).

Two ways to check it:

* on a GPU (skipped without one, or without the CUDA part of the extension): the 'cuda'
  ``qconv2d_nhwc`` against integer arithmetic written out here, int32 with ``torch.equal``,
  epilogues within the error budget;
* everywhere with a C++ compiler: the kernel source itself compiled for the host, with the few
  CUDA intrinsics it uses (__dp4a, __byte_perm, the explicitly rounded float ops, half / bf16
  conversions) emulated in plain C++ below and the launch syntax removed. Its kernels use
  grid-stride loops and no shared memory, so one host "thread" with gridDim = blockDim = 1 runs
  every item. This checks the arithmetic (tap transpose, zero-point algebra, epilogue) of the
  exact code a GPU would run, though not the compiler, the memory model or the launch.
"""
import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from _support.integer import check_float_out, check_requant, conv_ref, epilogue_expected, rand_int
from zsq_engine import ops
from zsq_engine.ops.dispatch import backend_status
from zsq_engine.opspec.epilogue import Epilogue

CUDA_DIR = Path(__file__).resolve().parents[1] / "csrc" / "cuda"
CXX = shutil.which("g++") or shutil.which("c++")

# ------------------------------------------------------------------------ host emulation

EMULATION_PRELUDE = r"""
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
struct EmuDim { unsigned x; };
static EmuDim blockIdx = {0}, threadIdx = {0}, gridDim = {1}, blockDim = {1};
#define __global__
#define __device__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__
typedef int cudaError_t;
typedef void* cudaStream_t;
static const int cudaSuccess = 0;
inline cudaError_t cudaGetLastError() { return 0; }
typedef _Float16 __half;
inline float __half2float(__half h) { return (float)h; }
inline __half __float2half_rn(float f) { return (__half)f; }
struct __nv_bfloat16 { uint16_t x; };
inline float __bfloat162float(__nv_bfloat16 b) {
  uint32_t u = (uint32_t)b.x << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u; std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return {(uint16_t)0x7FC0};
  u += 0x7FFFu + ((u >> 16) & 1u); return {(uint16_t)(u >> 16)}; }
// PTX prmt: result byte n = byte (s >> 4n) & 7 of {y:x}
inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
  const uint64_t v = ((uint64_t)y << 32) | x; uint32_t r = 0;
  for (int n = 0; n < 4; ++n) r |= (uint32_t)((v >> (8 * ((s >> (4 * n)) & 7))) & 0xFF) << (8 * n);
  return r; }
inline int __dp4a(int a, int b, int c) {
  uint32_t acc = (uint32_t)c;
  for (int i = 0; i < 4; ++i) acc += (uint32_t)((int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i)));
  return (int)acc; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __int2float_rn(int a) { return (float)a; }
inline int __float2int_rn(float a) { return (int)std::nearbyint(a); }
"""


class _Ep(ctypes.Structure):
    P = ctypes.c_void_p
    _fields_ = [("act_zero_point", ctypes.c_int32), ("weight_zero_point", P), ("wzp_per_channel", ctypes.c_int),
                ("weight_scale", P), ("wscale_per_channel", ctypes.c_int), ("act_scale", P),
                ("ascale_per_row", ctypes.c_int), ("bias", P), ("residual", P), ("residual_kind", ctypes.c_int),
                ("residual_scale", ctypes.c_float), ("residual_zero_point", ctypes.c_int32),
                ("activation", ctypes.c_int), ("out_kind", ctypes.c_int), ("out_scale", ctypes.c_float),
                ("out_zero_point", ctypes.c_int32), ("quant_min", ctypes.c_int32), ("quant_max", ctypes.c_int32)]


class _Geometry(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in "batch h w c kh kw stride_h stride_w pad_h pad_w dil_h dil_w oh ow".split()]


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """The .cu compiled for the host as a shared library (launch syntax and CUDA includes removed)."""
    if CXX is None:
        pytest.skip("no C++ compiler on PATH")
    d = tmp_path_factory.mktemp("cuda_emu")
    (d / "cuda").mkdir()
    header = (CUDA_DIR / "launchers.h").read_text().replace("#include <cuda_runtime_api.h>", "")
    (d / "cuda" / "launchers.h").write_text(header)
    src = (CUDA_DIR / "depthwise_dp4a.cu").read_text()
    lines = [ln for ln in src.splitlines() if not ln.strip().startswith("#include <cuda")]
    body = "\n".join(lines)
    body = re.sub(r"<<<[^>]*>>>", "", body)
    (d / "dw.cpp").write_text(EMULATION_PRELUDE + body)
    lib = d / "libdw.so"
    run = subprocess.run([CXX, "-std=c++17", "-O1", "-ffp-contract=off", "-fPIC", "-shared", f"-I{d}",
                          str(d / "dw.cpp"), "-o", str(lib)], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        if "_Float16" in run.stderr:
            pytest.skip("this C++ compiler has no _Float16 (needed to emulate __half)")
        pytest.fail(f"host build of depthwise_dp4a.cu failed:\n{run.stderr}")
    return ctypes.CDLL(str(lib))


def emulated_depthwise(lib, x, w, stride, padding, dilation, pad_value, *, w_int4=False, ep_fields=None,
                       out_dtype=torch.int32):
    b, h, wd, c = x.shape
    kh, kw = w.shape[1], w.shape[2]
    taps = kh * kw
    wsrc = (ops.pack_int4(w.reshape(c, taps)) if w_int4 else w.reshape(c, taps)).contiguous()
    words = torch.empty((taps + 3) // 4, c, dtype=torch.int32)
    wsum = torch.empty(c, dtype=torch.int32)
    assert lib.zsq_depthwise_weight_relayout_cuda_launch(_ptr(wsrc), ctypes.c_int64(c), ctypes.c_int64(taps),
                                                         int(w_int4), _ptr(words), _ptr(wsum), None) == 0
    oh = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (wd + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    geo = _Geometry(b, h, wd, c, kh, kw, stride, stride, padding, padding, dilation, dilation, oh, ow)
    ep = _Ep()
    for k, v in (ep_fields or {}).items():
        setattr(ep, k, v)
    out = torch.empty(b, oh, ow, c, dtype=out_dtype)
    assert lib.zsq_depthwise_conv2d_dp4a_cuda_launch(_ptr(x), int(x.dtype == torch.int8), ctypes.byref(geo),
                                                     pad_value, _ptr(words), _ptr(wsum), ctypes.byref(ep),
                                                     _ptr(out), None) == 0
    return out, words, wsum


GEOMETRIES = [(3, 3, 1, 1, 1), (3, 3, 2, 1, 1), (5, 5, 1, 2, 1), (5, 5, 2, 2, 1), (7, 7, 2, 3, 1),
              (3, 3, 1, 2, 2), (1, 1, 1, 0, 1), (3, 5, 2, 1, 1)]


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("kh,kw,stride,padding,dilation", GEOMETRIES)
@pytest.mark.parametrize("c", [1, 6, 8, 19])  # C % 4 != 0 takes the byte-load path
@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
def test_emulated_dp4a_int32_exact(emulated, kh, kw, stride, padding, dilation, c, xdtype):
    lo, hi = (0, 255) if xdtype == torch.uint8 else (-128, 127)
    x = rand_int((2, 9, 8, c), lo, hi, xdtype)
    w = rand_int((c, kh, kw, 1), -128, 127, torch.int8)
    w[0].fill_(-128)
    za = 101 if xdtype == torch.uint8 else -9
    zw = torch.randint(-3, 4, (c,), dtype=torch.int32)
    out, _, wsum = emulated_depthwise(emulated, x, w, stride, padding, dilation, lo)
    assert torch.equal(wsum, w.reshape(c, -1).int().sum(1))
    assert torch.equal(out, conv_ref(x, w, (stride,) * 2, (padding,) * 2, (dilation,) * 2, c, lo).int())
    fields = dict(act_zero_point=za, weight_zero_point=_ptr(zw), wzp_per_channel=int(c > 1))
    out, _, _ = emulated_depthwise(emulated, x, w, stride, padding, dilation, za, ep_fields=fields)
    ref = conv_ref(x, w, (stride,) * 2, (padding,) * 2, (dilation,) * 2, c, za, za, zw)
    assert torch.equal(out, ref.int())


@pytest.mark.subprocess
def test_emulated_int4_relayout_matches_int8(emulated):
    c = 13
    w = rand_int((c, 5, 5, 1), -8, 7, torch.int8)
    w[0].fill_(-8)
    w[1].fill_(7)
    x = rand_int((1, 6, 6, c), -128, 127, torch.int8)
    out8, words8, sum8 = emulated_depthwise(emulated, x, w, 1, 2, 1, 0)
    out4, words4, sum4 = emulated_depthwise(emulated, x, w, 1, 2, 1, 0, w_int4=True)
    assert torch.equal(words4, words8) and torch.equal(sum4, sum8) and torch.equal(out4, out8)
    # words hold taps 4g..4g+3 of each channel as bytes, zero past the last tap
    padded = torch.zeros(c, 28, dtype=torch.int8)
    padded[:, :25] = w.reshape(c, 25)
    assert torch.equal(words8, padded.reshape(c, 7, 4).permute(1, 0, 2).contiguous().view(torch.int32).squeeze(-1))


# out_kind / residual_kind codes of launchers.h
_KIND = {torch.int32: 0, torch.float32: 1, torch.float16: 2, torch.bfloat16: 3, torch.int8: 4, torch.uint8: 5}


@pytest.mark.subprocess
@pytest.mark.parametrize("out_dtype,residual_dtype", [
    (torch.float32, torch.float32), (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
    (torch.int8, torch.int8), (torch.uint8, torch.uint8), (torch.uint8, None)])
@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_emulated_epilogue(emulated, out_dtype, residual_dtype, act):
    c = 24
    x = rand_int((2, 7, 7, c), 0, 255, torch.uint8)
    w = rand_int((c, 3, 3, 1), -127, 127, torch.int8)
    zw = torch.randint(-2, 3, (c,), dtype=torch.int32)
    m = 2 * 4 * 4
    sa, sw, bias = torch.rand(m) * 0.01 + 1e-3, torch.rand(c) * 0.01 + 1e-3, torch.randn(c)
    res, rs, rzp = None, None, 0
    if residual_dtype in (torch.float32, torch.float16, torch.bfloat16):
        res = torch.randn(m, c).to(residual_dtype)
    elif residual_dtype == torch.int8:
        res, rs, rzp = rand_int((m, c), -128, 127, torch.int8), 0.03, 2
    elif residual_dtype == torch.uint8:
        res, rs, rzp = rand_int((m, c), 0, 255, torch.uint8), 0.02, 128
    fields = dict(act_zero_point=128, weight_zero_point=_ptr(zw), wzp_per_channel=1, weight_scale=_ptr(sw),
                  wscale_per_channel=1, act_scale=_ptr(sa), ascale_per_row=1, bias=_ptr(bias),
                  activation={"relu": 1, "relu6": 2}[act], out_kind=_KIND[out_dtype])
    if res is not None:
        fields.update(residual=_ptr(res), residual_kind=_KIND[res.dtype], residual_scale=rs or 1.0,
                      residual_zero_point=rzp)
    qmin, qmax, zp = (-128, 127, 3) if out_dtype == torch.int8 else (0, 255, 7)
    if out_dtype in (torch.int8, torch.uint8):
        fields.update(out_scale=0.05, out_zero_point=zp, quant_min=qmin, quant_max=qmax)
    out, _, _ = emulated_depthwise(emulated, x, w, 2, 1, 1, 128, ep_fields=fields, out_dtype=out_dtype)
    prod = conv_ref(x, w, (2, 2), (1, 1), (1, 1), c, 128, 128, zw)
    v, mag = epilogue_expected(prod, m, c, sa=sa, sw=sw, bias=bias, residual=res, res_scale=rs, res_zp=rzp, act=act)
    if out_dtype in (torch.int8, torch.uint8):
        check_requant(out, v, 0.05, zp, qmin, qmax, mag)
    else:
        check_float_out(out.reshape(m, c), v, mag, out_dtype)


# ------------------------------------------------------------------------------ on a GPU

needs_cuda_kernels = pytest.mark.skipif(not torch.cuda.is_available() or not backend_status("cuda")[0],
                                        reason="needs a GPU and the CUDA part of the extension")


def _cuda(*tensors):
    return [t.cuda() for t in tensors]


@needs_cuda_kernels
@pytest.mark.parametrize("kh,kw,stride,padding,dilation", GEOMETRIES)
@pytest.mark.parametrize("c", [1, 6, 32, 144])
@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
def test_gpu_depthwise_int32_exact(kh, kw, stride, padding, dilation, c, xdtype):
    lo, hi = (0, 255) if xdtype == torch.uint8 else (-128, 127)
    x = rand_int((3, 17, 15, c), lo, hi, xdtype)
    w = rand_int((c, kh, kw, 1), -128, 127, torch.int8)
    za = 99 if xdtype == torch.uint8 else -3
    zw = torch.randint(-4, 5, (c,), dtype=torch.int32)
    ep = Epilogue(act_zero_point=za, weight_zero_point=zw.cuda(), out_dtype=torch.int32)
    xc, wc = _cuda(x, w)
    with ops.use_backend("cuda", strict=True):
        plain = ops.qconv2d_nhwc(xc, wc, stride, padding, dilation, c, pad_value=lo)
        zp = ops.qconv2d_nhwc(xc, wc, stride, padding, dilation, c, epilogue=ep, pad_value=za)
    geo = ((stride,) * 2, (padding,) * 2, (dilation,) * 2, c)
    assert torch.equal(plain.cpu(), conv_ref(x, w, *geo, lo).int())
    assert torch.equal(zp.cpu(), conv_ref(x, w, *geo, za, za, zw).int())


@needs_cuda_kernels
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8])
def test_gpu_depthwise_epilogue(out_dtype):
    c = 40
    x = rand_int((2, 14, 14, c), 0, 255, torch.uint8)
    w = rand_int((c, 3, 3, 1), -127, 127, torch.int8)
    sw, bias = torch.rand(c) * 0.01 + 1e-3, torch.randn(c)
    res = torch.randn(2, 7, 7, c)
    kw = dict(out_scale=0.05, out_zero_point=5) if out_dtype in (torch.int8, torch.uint8) else {}
    ep = Epilogue(weight_scale=sw.cuda(), act_scale=0.02, act_zero_point=120, bias=bias.cuda(),
                  residual=res.cuda(), activation="relu6", out_dtype=out_dtype, **kw)
    xc, wc = _cuda(x, w)
    with ops.use_backend("cuda", strict=True):
        out = ops.qconv2d_nhwc(xc, wc, 2, 1, 1, c, epilogue=ep, pad_value=120).cpu()
    prod = conv_ref(x, w, (2, 2), (1, 1), (1, 1), c, 120, 120)
    m = prod.numel() // c
    v, mag = epilogue_expected(prod, m, c, sa=0.02, sw=sw, bias=bias, residual=res, act="relu6")
    if out_dtype in (torch.int8, torch.uint8):
        qmin, qmax = (-128, 127) if out_dtype == torch.int8 else (0, 255)
        check_requant(out, v, 0.05, 5, qmin, qmax, mag)
    else:
        check_float_out(out.reshape(m, c), v, mag, out_dtype)


@needs_cuda_kernels
def test_gpu_relayout_int4_and_fallback():
    from zsq_engine.ops.int_conv import cuda as int_conv_cuda

    w = rand_int((21, 3, 3, 1), -8, 7, torch.int8).cuda()
    words8, sum8 = int_conv_cuda.relayout_depthwise(w)
    words4, sum4 = int_conv_cuda.relayout_depthwise(ops.pack_int4(w.reshape(21, 9)), w_int4=True, taps=9)
    assert torch.equal(words8, words4) and torch.equal(sum8, sum4)
    # a conv that is not depthwise is passed on (Triton or reference), still exact
    x = rand_int((1, 8, 8, 6), -128, 127, torch.int8)
    wg = rand_int((4, 3, 3, 6), -128, 127, torch.int8)
    with ops.use_backend("cuda", strict=True):
        out = ops.qconv2d_nhwc(x.cuda(), wg.cuda(), 1, 1)
    assert torch.equal(out.cpu(), conv_ref(x, wg, (1, 1), (1, 1), (1, 1), 1, 0).int())
    with pytest.raises(RuntimeError, match="must be int8"):
        int_conv_cuda.relayout_depthwise(w.to(torch.int16))
