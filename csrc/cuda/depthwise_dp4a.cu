// Depthwise int8 conv in NHWC with __dp4a, plus the weight re-layout it reads (torch-free; the
// contracts are in launchers.h).
//
// Why dp4a fits a depthwise conv. A depthwise conv reduces over the kh * kw taps of one channel,
// never across channels, so the 4 bytes of one NHWC load (4 channels of one pixel) cannot go
// into one dp4a. A thread therefore owns 4 consecutive channels of one output pixel: it loads
// the 32-bit word of 4 taps, transposes the 4 x 4 bytes with __byte_perm (6 byte permutes), and
// then each channel's word holds 4 *taps*, which one dp4a multiplies by the channel's 4 weights
// (re-laid once as words [ceil(taps/4)][C][4]) and adds into an exact int32 accumulator: 4
// dp4a + 4 dp4a (the activation sums) replace 16 multiply-adds and 16 byte loads.
//
// Numerics. dp4a is signed x signed, so uint8 activations enter as u = x - 128 (x ^ 0x80) and
// the epilogue works with za' = za - 128; int8 activations as they are (za' = za). Then, per
// channel, with T = kh * kw (padded taps read pad_value, so every output sees T taps):
//   sum_t (x - za)(w - zw) = S_uw - za' * S_w - zw * S_u + T * za' * zw
// where S_uw = sum u w and S_u = sum u come from dp4a and S_w = sum w from the re-layout. All of
// this is uint32 arithmetic (wraps like the CPU kernels), exact whenever the true result fits
// int32. The float epilogue follows zsq_engine/opspec/epilogue.py step by step with explicitly
// rounded intrinsics (__fmul_rn, __fadd_rn, __fdiv_rn), so nvcc cannot contract anything into
// an FMA and every step rounds as the CPU kernel and the error budget assume.
//
// Tap padding: taps 4g..4g+3 beyond T load 0 and have weight 0, so they add nothing to S_uw or
// S_u. Channel padding (C % 4 != 0): the tail channels of the last quad read 0 and are not
// stored. Loads are 32-bit only when C % 4 == 0 and x is 4-byte aligned, else byte by byte.
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda/launchers.h"

namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loop beyond this

inline unsigned int grid_for(int64_t n_items) {
  int64_t blocks = (n_items + kThreadsPerBlock - 1) / kThreadsPerBlock;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned int>(blocks);
}

// ------------------------------------------------------------------------ weight re-layout

// One thread per channel: words[g * C + c] holds w[c, 4g .. 4g+3] (zero past the last tap),
// wsum[c] = sum_t w[c, t]. Consecutive threads write consecutive words (coalesced).
__global__ void depthwise_weight_relayout_kernel(const uint8_t* __restrict__ w, int64_t channels,
                                                 int64_t taps, int w_int4,
                                                 uint32_t* __restrict__ words,
                                                 int32_t* __restrict__ wsum) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t groups = (taps + 3) / 4;
  const int64_t row_bytes = w_int4 ? (taps + 1) / 2 : taps;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < channels;
       c += stride) {
    const uint8_t* row = w + c * row_bytes;
    int32_t sum = 0;
    for (int64_t g = 0; g < groups; ++g) {
      uint32_t word = 0;
      for (int j = 0; j < 4; ++j) {
        const int64_t t = 4 * g + j;
        if (t >= taps) break;
        int32_t v;
        if (w_int4) {
          const uint32_t nib = (row[t >> 1] >> ((t & 1) * 4)) & 0xFu;
          v = static_cast<int32_t>(nib ^ 8u) - 8;  // sign-extend the two's-complement nibble
        } else {
          v = static_cast<int8_t>(row[t]);
        }
        sum += v;
        word |= (static_cast<uint32_t>(v) & 0xFFu) << (8 * j);
      }
      words[g * channels + c] = word;
    }
    wsum[c] = sum;
  }
}

// -------------------------------------------------------------------------------- the conv

// 4 x 4 byte transpose: in[j] byte i = tap j, channel i  ->  out[i] byte j.
__device__ __forceinline__ void transpose4x4(const uint32_t in[4], uint32_t out[4]) {
  const uint32_t lo01 = __byte_perm(in[0], in[1], 0x5140);  // in0.b0 in1.b0 in0.b1 in1.b1
  const uint32_t hi01 = __byte_perm(in[0], in[1], 0x7362);  // in0.b2 in1.b2 in0.b3 in1.b3
  const uint32_t lo23 = __byte_perm(in[2], in[3], 0x5140);
  const uint32_t hi23 = __byte_perm(in[2], in[3], 0x7362);
  out[0] = __byte_perm(lo01, lo23, 0x5410);
  out[1] = __byte_perm(lo01, lo23, 0x7632);
  out[2] = __byte_perm(hi01, hi23, 0x5410);
  out[3] = __byte_perm(hi01, hi23, 0x7632);
}

__device__ __forceinline__ float load_residual(const ZsqIntEpilogueCuda& ep, int64_t idx) {
  switch (ep.residual_kind) {
    case ZSQ_INT_OUT_FLOAT16: return __half2float(static_cast<const __half*>(ep.residual)[idx]);
    case ZSQ_INT_OUT_BFLOAT16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(ep.residual)[idx]);
    case ZSQ_INT_OUT_INT8:
      return __fmul_rn(__int2float_rn(static_cast<int32_t>(static_cast<const int8_t*>(ep.residual)[idx]) -
                                      ep.residual_zero_point),
                       ep.residual_scale);
    case ZSQ_INT_OUT_UINT8:
      return __fmul_rn(__int2float_rn(static_cast<int32_t>(static_cast<const uint8_t*>(ep.residual)[idx]) -
                                      ep.residual_zero_point),
                       ep.residual_scale);
    default: return static_cast<const float*>(ep.residual)[idx];
  }
}

// Steps 2-5 of zsq_engine/opspec/epilogue.py for output element (m, c); acc is already
// zero-point corrected (step 1). Not inlined: inlined, its option branches get unswitched out
// of the pixel loop into dozens of copies of the whole kernel (60k PTX lines, minutes of ptxas)
// while the call costs little next to the kh * kw taps of loads before it.
__device__ __noinline__ void finish(const ZsqIntEpilogueCuda& ep, int64_t m, int64_t c,
                                       int64_t channels, int32_t acc, void* out) {
  const int64_t idx = m * channels + c;
  if (ep.out_kind == ZSQ_INT_OUT_INT32) {
    static_cast<int32_t*>(out)[idx] = acc;
    return;
  }
  const float sa = ep.act_scale[ep.ascale_per_row ? m : 0];
  const float sw = ep.weight_scale[ep.wscale_per_channel ? c : 0];
  float v = __fmul_rn(__int2float_rn(acc), __fmul_rn(sa, sw));
  if (ep.bias != nullptr) v = __fadd_rn(v, ep.bias[c]);
  if (ep.residual != nullptr) v = __fadd_rn(v, load_residual(ep, idx));
  if (ep.activation == ZSQ_INT_ACT_RELU) {
    v = v > 0.0f ? v : 0.0f;
  } else if (ep.activation == ZSQ_INT_ACT_RELU6) {
    v = v > 0.0f ? v : 0.0f;
    v = v < 6.0f ? v : 6.0f;
  }
  switch (ep.out_kind) {
    case ZSQ_INT_OUT_FLOAT16: static_cast<__half*>(out)[idx] = __float2half_rn(v); break;
    case ZSQ_INT_OUT_BFLOAT16: static_cast<__nv_bfloat16*>(out)[idx] = __float2bfloat16_rn(v); break;
    case ZSQ_INT_OUT_INT8:
    case ZSQ_INT_OUT_UINT8: {
      // rintf rounds half to even; fmaxf maps a NaN (impossible with finite scales) to qmin
      float q = __fadd_rn(rintf(__fdiv_rn(v, ep.out_scale)), __int2float_rn(ep.out_zero_point));
      q = fminf(fmaxf(q, __int2float_rn(ep.quant_min)), __int2float_rn(ep.quant_max));
      const int32_t qi = __float2int_rn(q);
      if (ep.out_kind == ZSQ_INT_OUT_INT8) {
        static_cast<int8_t*>(out)[idx] = static_cast<int8_t>(qi);
      } else {
        static_cast<uint8_t*>(out)[idx] = static_cast<uint8_t>(qi);
      }
      break;
    }
    default: static_cast<float*>(out)[idx] = v; break;
  }
}

// One thread per (output pixel, quad of 4 channels), quads fastest, so a warp reads 128
// contiguous bytes of one input pixel per tap. kWordLoads: C % 4 == 0 and x 4-byte aligned.
template <bool kWordLoads>
__global__ void depthwise_dp4a_kernel(const uint8_t* __restrict__ x, uint32_t flip,
                                      ZsqConvGeometry s, uint32_t pad_word,
                                      const uint32_t* __restrict__ wwords,
                                      const int32_t* __restrict__ wsum, ZsqIntEpilogueCuda ep,
                                      void* __restrict__ out) {
  const int64_t quads = (s.c + 3) / 4;
  const int64_t pixels = s.batch * s.oh * s.ow;
  const int64_t total = pixels * quads;
  const int64_t taps = s.kh * s.kw;
  const int64_t groups = (taps + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  // za' of the u domain (see the file comment)
  const uint32_t za_u = static_cast<uint32_t>(ep.act_zero_point) - (flip != 0u ? 128u : 0u);
  const uint32_t t_za = static_cast<uint32_t>(taps) * za_u;

  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < total;
       item += stride) {
    const int64_t q = item % quads;
    const int64_t px = item / quads;
    const int64_t b = px / (s.oh * s.ow);
    const int64_t rem = px - b * s.oh * s.ow;
    const int64_t oh = rem / s.ow, ow = rem - oh * s.ow;
    const int64_t c0 = 4 * q;
    const int nvalid = s.c - c0 < 4 ? static_cast<int>(s.c - c0) : 4;
    const uint8_t* img = x + b * s.h * s.w * s.c + c0;

    int32_t s_uw[4] = {0, 0, 0, 0};
    int32_t s_u[4] = {0, 0, 0, 0};
    // Not unrolled: the trip count is tiny (1-13) and unrolling it multiplies the code (and
    // ptxas time) for no gain; the 4 taps inside are unrolled.
#pragma unroll 1
    for (int64_t g = 0; g < groups; ++g) {
      uint32_t tapw[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t t = 4 * g + j;
        uint32_t word = 0;  // taps past the last one: weight 0, activation 0
        if (t < taps) {
          const int64_t r = t / s.kw, k = t - r * s.kw;
          const int64_t ih = oh * s.stride_h - s.pad_h + r * s.dil_h;
          const int64_t iw = ow * s.stride_w - s.pad_w + k * s.dil_w;
          if (ih >= 0 && ih < s.h && iw >= 0 && iw < s.w) {
            const uint8_t* p = img + (ih * s.w + iw) * s.c;
            if (kWordLoads) {
              word = *reinterpret_cast<const uint32_t*>(p) ^ flip;
            } else {
              for (int i = 0; i < nvalid; ++i) word |= static_cast<uint32_t>(p[i]) << (8 * i);
              word ^= flip;
            }
          } else {
            word = pad_word;
          }
          // tail channels of a partial quad read 0 (never stored)
          if (!kWordLoads && nvalid < 4) word &= 0xFFFFFFFFu >> (8 * (4 - nvalid));
        }
        tapw[j] = word;
      }
      uint32_t chw[4];
      transpose4x4(tapw, chw);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (i < nvalid) {
          const int wv = static_cast<int>(wwords[g * s.c + c0 + i]);
          s_uw[i] = __dp4a(static_cast<int>(chw[i]), wv, s_uw[i]);
          s_u[i] = __dp4a(static_cast<int>(chw[i]), 0x01010101, s_u[i]);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if (i >= nvalid) break;
      const int64_t c = c0 + i;
      const uint32_t zw = ep.weight_zero_point == nullptr
                              ? 0u
                              : static_cast<uint32_t>(ep.weight_zero_point[ep.wzp_per_channel ? c : 0]);
      const uint32_t acc = static_cast<uint32_t>(s_uw[i]) - za_u * static_cast<uint32_t>(wsum[c]) -
                           zw * static_cast<uint32_t>(s_u[i]) + t_za * zw;
      finish(ep, px, c, s.c, static_cast<int32_t>(acc), out);
    }
  }
}

}  // namespace

extern "C" cudaError_t zsq_depthwise_weight_relayout_cuda_launch(const uint8_t* w, int64_t channels,
                                                                 int64_t taps, int w_int4,
                                                                 int32_t* words, int32_t* wsum,
                                                                 cudaStream_t stream) {
  if (channels <= 0 || taps <= 0) return cudaSuccess;
  depthwise_weight_relayout_kernel<<<grid_for(channels), kThreadsPerBlock, 0, stream>>>(
      w, channels, taps, w_int4, reinterpret_cast<uint32_t*>(words), wsum);
  return cudaGetLastError();
}

extern "C" cudaError_t zsq_depthwise_conv2d_dp4a_cuda_launch(const uint8_t* x, int x_signed,
                                                             const ZsqConvGeometry* geometry,
                                                             int32_t pad_value, const int32_t* words,
                                                             const int32_t* wsum,
                                                             const ZsqIntEpilogueCuda* epilogue,
                                                             void* out, cudaStream_t stream) {
  const ZsqConvGeometry s = *geometry;
  const int64_t total = s.batch * s.oh * s.ow * ((s.c + 3) / 4);
  if (total <= 0) return cudaSuccess;
  const uint32_t flip = x_signed ? 0u : 0x80808080u;
  const uint32_t pad_byte = (static_cast<uint32_t>(pad_value) & 0xFFu) ^ (flip & 0xFFu);
  const uint32_t pad_word = pad_byte * 0x01010101u;
  const uint32_t* ww = reinterpret_cast<const uint32_t*>(words);
  const bool word_loads = s.c % 4 == 0 && (reinterpret_cast<uintptr_t>(x) & 3u) == 0;
  if (word_loads) {
    depthwise_dp4a_kernel<true><<<grid_for(total), kThreadsPerBlock, 0, stream>>>(
        x, flip, s, pad_word, ww, wsum, *epilogue, out);
  } else {
    depthwise_dp4a_kernel<false><<<grid_for(total), kThreadsPerBlock, 0, stream>>>(
        x, flip, s, pad_word, ww, wsum, *epilogue, out);
  }
  return cudaGetLastError();
}
