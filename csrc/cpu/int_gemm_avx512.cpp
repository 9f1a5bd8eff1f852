// AVX-512 VNNI micro-kernel of the CPU integer GEMM (see int_gemm.h for the layouts).
//
// vpdpbusd multiplies 4 unsigned bytes of one operand by 4 signed bytes of the other and adds
// the four products to an int32 lane, without saturation. The weight panel holds 4 consecutive
// k of 16 output channels in one zmm ([16][4] int8), so one instruction does 64 MACs for one
// activation row: the row's 4 activation bytes are broadcast to all lanes. A call keeps
// rows x panels (up to 6 x 4) zmm accumulators in registers over the whole K, so the tile is
// finished (and its epilogue applied) without partial sums in memory.
//
// This file is compiled for AVX-512 through the pragma below, after every system header, so
// nothing shared with other translation units (inline functions of the standard library) gets
// AVX-512 code; everything here has internal linkage except the one entry point, which the
// driver calls only after checking the CPU.
#include <chrono>
#include <cstdint>
#include <cstring>

#include "cpu/int_gemm_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
#endif
#include <immintrin.h>

namespace zsq {
namespace cpu {
namespace intk {
namespace {

template <int ROWS, int PANELS>
void vnni_tile(const uint8_t* a, int64_t lda, const int8_t* w, int64_t panel_stride,
               int64_t kgroups, int32_t* c) {
  __m512i acc[ROWS][PANELS];
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
    for (int p = 0; p < PANELS; ++p) acc[r][p] = _mm512_setzero_si512();
  for (int64_t g = 0; g < kgroups; ++g) {
    __m512i wv[PANELS];
#pragma GCC unroll 4
    for (int p = 0; p < PANELS; ++p) wv[p] = _mm512_loadu_si512(w + p * panel_stride + g * 64);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      int32_t a4;
      std::memcpy(&a4, a + r * lda + 4 * g, 4);
      const __m512i av = _mm512_set1_epi32(a4);
#pragma GCC unroll 4
      for (int p = 0; p < PANELS; ++p) acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], av, wv[p]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
    for (int p = 0; p < PANELS; ++p) _mm512_storeu_si512(c + r * kTileLd + p * 16, acc[r][p]);
}

template <int ROWS>
void vnni_rows(const uint8_t* a, int64_t lda, const int8_t* w, int64_t ps, int panels,
               int64_t kg, int32_t* c) {
  switch (panels) {
    case 1: vnni_tile<ROWS, 1>(a, lda, w, ps, kg, c); break;
    case 2: vnni_tile<ROWS, 2>(a, lda, w, ps, kg, c); break;
    case 3: vnni_tile<ROWS, 3>(a, lda, w, ps, kg, c); break;
    default: vnni_tile<ROWS, 4>(a, lda, w, ps, kg, c); break;
  }
}

}  // namespace

void tile_kernel_avx512_vnni(const uint8_t* a, int64_t lda, int rows, const int8_t* w,
                             int64_t panel_stride, int panels, int64_t kgroups, int32_t* c) {
  switch (rows) {
    case 1: vnni_rows<1>(a, lda, w, panel_stride, panels, kgroups, c); break;
    case 2: vnni_rows<2>(a, lda, w, panel_stride, panels, kgroups, c); break;
    case 3: vnni_rows<3>(a, lda, w, panel_stride, panels, kgroups, c); break;
    case 4: vnni_rows<4>(a, lda, w, panel_stride, panels, kgroups, c); break;
    case 5: vnni_rows<5>(a, lda, w, panel_stride, panels, kgroups, c); break;
    default: vnni_rows<6>(a, lda, w, panel_stride, panels, kgroups, c); break;
  }
}

double vnni_peak_macs_per_second(double seconds) {
  // 12 independent accumulator chains hide vpdpbusd's latency; the asm barrier keeps the
  // compiler from hoisting the loop-invariant operands out of the products.
  __m512i acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_epi32(i);
  __m512i a = _mm512_set1_epi32(0x01020304);
  const __m512i b = _mm512_set1_epi32(0x01010101);
  constexpr int64_t kBlock = 1 << 16;
  int64_t iters = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double elapsed = 0.0;
  do {
    for (int64_t it = 0; it < kBlock; ++it) {
#pragma GCC unroll 12
      for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
      __asm__ volatile("" : "+v"(a));
    }
    iters += kBlock;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } while (elapsed < seconds);
  int32_t sink = 0;
  for (int i = 0; i < 12; ++i) sink += _mm512_reduce_add_epi32(acc[i]);
  __asm__ volatile("" : : "r"(sink));
  return static_cast<double>(iters) * 12 * 64 / elapsed;
}

void requant_tile_avx512(const int32_t* acc, int64_t ld, int rows, int64_t cols,
                         const RequantTile& t) {
  const __m512 zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6.0f);
  const __m512 so = _mm512_set1_ps(t.out_scale), zp = _mm512_set1_ps(t.out_zero_point);
  const __m512 qmin = _mm512_set1_ps(t.quant_min), qmax = _mm512_set1_ps(t.quant_max);
  const __m512i c0 = _mm512_set1_epi32(static_cast<int32_t>(t.col_correction));
  for (int64_t j = 0; j < cols; j += 16) {
    const int64_t left = cols - j;
    const __mmask16 mask = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                      : static_cast<__mmask16>((1u << left) - 1u);
    // per-column terms, shared by the rows of the tile
    __m512i corr = _mm512_setzero_si512();
    if (t.colsum != nullptr) corr = _mm512_mullo_epi32(c0, _mm512_maskz_loadu_epi32(mask, t.colsum + j));
    const __m512 sw = t.wscale_per_channel ? _mm512_maskz_loadu_ps(mask, t.weight_scale + j)
                                           : _mm512_set1_ps(t.weight_scale[0]);
    const __m512 bias = t.bias != nullptr ? _mm512_maskz_loadu_ps(mask, t.bias + j) : zero;
    for (int r = 0; r < rows; ++r) {
      const __m512i a = _mm512_maskz_loadu_epi32(mask, acc + r * ld + j);
      const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(t.act_scale[t.ascale_per_row ? r : 0]), sw);
      __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(a, corr)), scale);
      if (t.bias != nullptr) v = _mm512_add_ps(v, bias);
      // max(v, 0) returns 0 for NaN and -0, like the scalar v > 0 ? v : 0
      if (t.activation >= 1) v = _mm512_max_ps(v, zero);
      if (t.activation == 2) v = _mm512_min_ps(v, six);
      __m512 q = _mm512_roundscale_ps(_mm512_div_ps(v, so), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(q, zp), qmin), qmax);
      // q is integral and inside the 8-bit range: truncating to a byte is exact
      const __m128i bytes = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q));
      // masked byte stores are slow on some cores (Zen 4): only the column tail uses one
      if (left >= 16) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(t.out + r * t.out_ld + j), bytes);
      } else {
        _mm_mask_storeu_epi8(t.out + r * t.out_ld + j, mask, bytes);
      }
    }
  }
}

}  // namespace intk
}  // namespace cpu
}  // namespace zsq

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // x86-64
