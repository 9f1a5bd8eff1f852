// AVX2 micro-kernel of the CPU integer GEMM (see int_gemm.h for the layouts), for CPUs without
// VNNI.
//
// vpmaddubsw (u8 x s8 -> pairs summed into int16) would be the direct analogue of vpdpbusd,
// but its int16 pair sum saturates (255 * 127 * 2 > 32767), so it is not exact. Instead both
// operands are widened to int16 and multiplied with vpmaddwd, whose pair sums are int32 and
// exact: a 16-byte slice of the panel (4 channels x 4 k) becomes 16 int16, the row's 4
// activation bytes are zero-extended and broadcast to every 4-lane group, and each vpmaddwd
// yields two partial sums per channel, added together when the tile is stored.
//
// Compiled for AVX2 through the pragma below, after every system header (see
// int_gemm_avx512.cpp for why); the driver calls it only on CPUs with AVX2.
#include <cstdint>
#include <cstring>

#include "cpu/int_gemm_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
#include <immintrin.h>

namespace zsq {
namespace cpu {
namespace intk {
namespace {

// ROWS rows x one panel (16 channels): 4 * ROWS accumulators + 4 widened weight registers.
template <int ROWS>
void avx2_panel(const uint8_t* a, int64_t lda, const int8_t* w, int64_t kgroups, int32_t* c) {
  __m256i acc[ROWS][4];
#pragma GCC unroll 4
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) acc[r][q] = _mm256_setzero_si256();
  for (int64_t g = 0; g < kgroups; ++g) {
    __m256i wv[4];
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      wv[q] = _mm256_cvtepi8_epi16(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + g * 64 + q * 16)));
    }
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r) {
      int32_t a4;
      std::memcpy(&a4, a + r * lda + 4 * g, 4);
      const __m256i av = _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(a4)));
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) acc[r][q] = _mm256_add_epi32(acc[r][q], _mm256_madd_epi16(wv[q], av));
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < ROWS; ++r) {
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      alignas(32) int32_t pairs[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(pairs), acc[r][q]);
      for (int j = 0; j < 4; ++j) c[r * kTileLd + q * 4 + j] = pairs[2 * j] + pairs[2 * j + 1];
    }
  }
}

void avx2_rows(const uint8_t* a, int64_t lda, int rows, const int8_t* w, int64_t kgroups,
               int32_t* c) {
  switch (rows) {
    case 1: avx2_panel<1>(a, lda, w, kgroups, c); break;
    case 2: avx2_panel<2>(a, lda, w, kgroups, c); break;
    default: avx2_panel<3>(a, lda, w, kgroups, c); break;
  }
}

}  // namespace

void tile_kernel_avx2(const uint8_t* a, int64_t lda, int rows, const int8_t* w,
                      int64_t panel_stride, int panels, int64_t kgroups, int32_t* c) {
  for (int p = 0; p < panels; ++p) {
    for (int r = 0; r < rows; r += 3) {
      const int n = rows - r < 3 ? rows - r : 3;
      avx2_rows(a + r * lda, lda, n, w + p * panel_stride, kgroups, c + r * kTileLd + p * 16);
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
