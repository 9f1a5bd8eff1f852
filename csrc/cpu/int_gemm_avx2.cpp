// AVX2 micro-kernels of the CPU integer GEMM (see int_gemm.h for the layouts), for CPUs without
// VNNI. Full-range weights go through vpmaddwd (int16 x int16, adjacent pairs summed into
// int32): a pair sum of u8 x s8 values is at most 2 * 255 * 128 = 65280, so it is exact, and the
// int32 accumulation wraps modulo 2^32 like the scalar reference. vpmaddubsw (u8 x s8 pairs
// summed into int16) does twice the products per instruction but saturates for full-range
// weights (2 * 255 * 127 > 32767); it is used only for panels whose weight pairs are narrow
// enough for it to be exact (int4 weights always; the bound and its proof are in
// int_gemm_kernels.h and docs/kernels_int.md, "AVX2: narrow weights").
//
// The driver runs it in two ways (measured in docs/kernels_int.md):
// * 6 rows or more: both operands are widened once, outside the hot loop. The driver widens the
//   gathered u8 activation tile to u16 (widen_tile_u16) and each 16-channel weight panel to
//   int16 in k-pair order (widen_panel_i16: [K/2][16 channels][2 k]); a widened panel is reused
//   by every row block of the work item. A call (madd_rows_avx2) keeps up to 6 rows x 16
//   channels in 12 ymm accumulators (each int32 lane one full channel sum), plus the 2 weight
//   registers of the k-pair and one broadcast: 15 of the 16 ymm registers, no spills. Each
//   (row, k-pair) operand is one 32-bit broadcast load from the u16 tile (a load, not a
//   shuffle), so the loop body is 2 weight loads, 6 broadcasts, 12 vpmaddwd and 12 vpaddd.
// * fewer rows (batch-1 GEMMs): tile_kernel_avx2 reads the int8 panels and u8 tile as the VNNI
//   kernel does, 3 rows x 16 channels per call, sign-extending each weight slice and
//   broadcasting each row's 4 zero-extended activation bytes inside the k loop; with so few
//   rows that costs less than widening every panel into a buffer first.
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

// ------------------------------------------------------------- few rows: int8 panels

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

// ---------------------------------------------------------- widened operands (6+ rows)

// ROWS rows (lda u16 apart) x 16 channels of one widened panel, over kpairs k-pairs.
template <int ROWS>
void madd_block(const uint16_t* a, int64_t lda, const int16_t* w, int64_t kpairs, int32_t* c,
                int64_t ldc) {
  __m256i acc[ROWS][2];
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r) {
    acc[r][0] = _mm256_setzero_si256();
    acc[r][1] = _mm256_setzero_si256();
  }
  for (int64_t kp = 0; kp < kpairs; ++kp) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + kp * 32));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + kp * 32 + 16));
#pragma GCC unroll 6
    for (int r = 0; r < ROWS; ++r) {
      // vbroadcastss from memory: the row's (u[2kp], u[2kp+1]) in every lane, on a load port
      const __m256i av = _mm256_castps_si256(
          _mm256_broadcast_ss(reinterpret_cast<const float*>(a + r * lda + 2 * kp)));
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(av, w0));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(av, w1));
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc), acc[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc + 8), acc[r][1]);
  }
}

// ------------------------------------------------------ narrow weights: vpmaddubsw

// ROWS rows x one int8 panel (16 channels, VNNI layout [kgroups][16][4]) with vpmaddubsw, exact
// only under the bound narrow_panel_steps checked (see there): per k-group and row, the 4
// bytes u[4g..4g+3] are broadcast and multiplied with the 2 weight registers (channels 0-7 and
// 8-15, 4 k each); int16 lane 2j then holds channel j's (k0, k1) pair sum and lane 2j + 1 its
// (k2, k3) pair sum. `steps` k-groups are summed in int16 (vpaddw), then vpmaddwd with ones
// adds each channel's two lanes into int32.
template <int ROWS>
void narrow_panel(const uint8_t* a, int64_t lda, const int8_t* w, int64_t kgroups, int steps,
                  int32_t* c, int64_t ldc) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[ROWS][2];
#pragma GCC unroll 4
  for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  for (int64_t g0 = 0; g0 < kgroups; g0 += steps) {
    const int64_t g1 = g0 + steps < kgroups ? g0 + steps : kgroups;
    __m256i s16[ROWS][2];
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r) s16[r][0] = s16[r][1] = _mm256_setzero_si256();
    for (int64_t g = g0; g < g1; ++g) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * 64));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * 64 + 32));
#pragma GCC unroll 4
      for (int r = 0; r < ROWS; ++r) {
        const __m256i av = _mm256_castps_si256(
            _mm256_broadcast_ss(reinterpret_cast<const float*>(a + r * lda + 4 * g)));
        s16[r][0] = _mm256_add_epi16(s16[r][0], _mm256_maddubs_epi16(av, w0));
        s16[r][1] = _mm256_add_epi16(s16[r][1], _mm256_maddubs_epi16(av, w1));
        __asm__("" : "+x"(s16[r][0]), "+x"(s16[r][1]));  // as in narrow_run_mem
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r) {
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(s16[r][0], ones));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(s16[r][1], ones));
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < ROWS; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc), acc[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc + 8), acc[r][1]);
  }
}

// The same arithmetic for longer int16 runs (steps >= kNarrowMemSteps): the int32 sums live in
// c (written at the first widening, then added to), so the registers hold only the int16 sums of
// ROWS rows (2 * ROWS), the 2 weight registers and the broadcast: 6 rows fit the 16 ymm without
// spills, and the weight loads are shared by twice the rows of narrow_panel.
template <int ROWS>
__attribute__((noinline)) void narrow_run_mem(const uint8_t* a, int64_t lda, const int8_t* w,
                                              int64_t groups, bool first, int32_t* c, int64_t ldc) {
  // one int16 run of `groups` k-groups (a separate function: inlined into the loop over runs,
  // GCC kept the int16 sums on the stack)
  __m256i s16[ROWS][2];
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r) s16[r][0] = s16[r][1] = _mm256_setzero_si256();
  for (int64_t g = 0; g < groups; ++g) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * 64));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * 64 + 32));
#pragma GCC unroll 6
    for (int r = 0; r < ROWS; ++r) {
      const __m256i av = _mm256_castps_si256(
          _mm256_broadcast_ss(reinterpret_cast<const float*>(a + r * lda + 4 * g)));
      s16[r][0] = _mm256_add_epi16(s16[r][0], _mm256_maddubs_epi16(av, w0));
      s16[r][1] = _mm256_add_epi16(s16[r][1], _mm256_maddubs_epi16(av, w1));
      // ties each sum to one register: without it GCC issued all products first and copied
      // every sum back with a vmovdqa (6 rows: onto the stack)
      __asm__("" : "+x"(s16[r][0]), "+x"(s16[r][1]));
    }
  }
  const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r) {
    __m256i* cr = reinterpret_cast<__m256i*>(c + r * ldc);
    __m256i v0 = _mm256_madd_epi16(s16[r][0], ones), v1 = _mm256_madd_epi16(s16[r][1], ones);
    if (!first) {
      v0 = _mm256_add_epi32(v0, _mm256_loadu_si256(cr));
      v1 = _mm256_add_epi32(v1, _mm256_loadu_si256(cr + 1));
    }
    _mm256_storeu_si256(cr, v0);
    _mm256_storeu_si256(cr + 1, v1);
  }
}

// The same arithmetic for longer int16 runs (steps >= kNarrowMemSteps): the int32 sums live in
// c (written by the first run, then added to), so the registers hold only the int16 sums of
// ROWS rows (2 * ROWS), the 2 weight registers and the broadcast: 6 rows fit the 16 ymm, and
// the weight loads are shared by twice the rows of narrow_panel.
template <int ROWS>
void narrow_panel_mem(const uint8_t* a, int64_t lda, const int8_t* w, int64_t kgroups, int steps,
                      int32_t* c, int64_t ldc) {
  for (int64_t g0 = 0; g0 < kgroups; g0 += steps) {
    const int64_t n = kgroups - g0 < steps ? kgroups - g0 : steps;
    narrow_run_mem<ROWS>(a + 4 * g0, lda, w + g0 * 64, n, g0 == 0, c, ldc);
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

void widen_tile_u16(const uint8_t* src, int64_t n, uint16_t* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_cvtepu8_epi16(b));
  }
  for (; i < n; ++i) dst[i] = src[i];
}

void widen_panel_i16(const int8_t* panel, int64_t kgroups, int16_t* dst) {
  // A 16-byte slice of a k-group is 4 channels x 4 k; this byte order puts their (k0, k1)
  // pairs in the low 8 bytes and their (k2, k3) pairs in the high 8 bytes.
  const __m128i split = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
  for (int64_t g = 0; g < kgroups; ++g) {
    const int8_t* src = panel + g * kPanelCols * kPanelK;
    __m128i s[4];
    for (int q = 0; q < 4; ++q) {
      s[q] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + q * 16)), split);
    }
    int16_t* d = dst + g * 64;  // k-pair 2g: channels 0-7, 8-15; k-pair 2g + 1: same
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), _mm256_cvtepi8_epi16(_mm_unpacklo_epi64(s[0], s[1])));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 16), _mm256_cvtepi8_epi16(_mm_unpacklo_epi64(s[2], s[3])));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 32), _mm256_cvtepi8_epi16(_mm_unpackhi_epi64(s[0], s[1])));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 48), _mm256_cvtepi8_epi16(_mm_unpackhi_epi64(s[2], s[3])));
  }
}

void madd_rows_avx2(const uint16_t* a, int64_t lda, int rows, const int16_t* w, int64_t kpairs,
                    int32_t* c, int64_t ldc) {
  for (int r = 0; r < rows; r += kAvx2Rows) {
    const int n = rows - r < kAvx2Rows ? rows - r : kAvx2Rows;
    const uint16_t* ar = a + r * lda;
    int32_t* cr = c + r * ldc;
    switch (n) {
      case 1: madd_block<1>(ar, lda, w, kpairs, cr, ldc); break;
      case 2: madd_block<2>(ar, lda, w, kpairs, cr, ldc); break;
      case 3: madd_block<3>(ar, lda, w, kpairs, cr, ldc); break;
      case 4: madd_block<4>(ar, lda, w, kpairs, cr, ldc); break;
      case 5: madd_block<5>(ar, lda, w, kpairs, cr, ldc); break;
      default: madd_block<6>(ar, lda, w, kpairs, cr, ldc); break;
    }
  }
}

int narrow_panel_steps(const int8_t* panel, int64_t kgroups) {
  // Largest |w_a| + |w_b| over the pairs vpmaddubsw sums: |w| as u8 (vpabsb maps -128 to 0x80,
  // i.e. 128), each adjacent byte pair added into int16 by vpmaddubsw with ones (at most 256,
  // no saturation), then the int16 maximum.
  const __m256i ones8 = _mm256_set1_epi8(1);
  __m256i mx = _mm256_setzero_si256();
  const int64_t n = kgroups * kPanelCols * kPanelK;  // a multiple of 64
  for (int64_t i = 0; i < n; i += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + i));
    mx = _mm256_max_epi16(mx, _mm256_maddubs_epi16(_mm256_abs_epi8(v), ones8));
  }
  __m128i m = _mm_max_epi16(_mm256_castsi256_si128(mx), _mm256_extracti128_si256(mx, 1));
  m = _mm_max_epi16(m, _mm_srli_si128(m, 8));
  m = _mm_max_epi16(m, _mm_srli_si128(m, 4));
  m = _mm_max_epi16(m, _mm_srli_si128(m, 2));
  const int pair = _mm_extract_epi16(m, 0);
  if (pair == 0) return static_cast<int>(kgroups < kNarrowMaxSteps ? kgroups : kNarrowMaxSteps);
  if (pair > kNarrowMaxPair) return 0;  // not exact
  const int steps = kNarrowInt16Max / (kNarrowMaxAct * pair);
  if (steps < kNarrowMinSteps) return 0;  // exact, but not faster
  return steps < kNarrowMaxSteps ? steps : kNarrowMaxSteps;
}

void narrow_rows_avx2(const uint8_t* a, int64_t lda, int rows, const int8_t* w, int64_t kgroups,
                      int steps, int32_t* c, int64_t ldc) {
  if (steps >= kNarrowMemSteps) {
    for (int r = 0; r < rows; r += kNarrowMemRows) {
      const int n = rows - r < kNarrowMemRows ? rows - r : kNarrowMemRows;
      const uint8_t* ar = a + r * lda;
      int32_t* cr = c + r * ldc;
      switch (n) {
        case 1: narrow_panel_mem<1>(ar, lda, w, kgroups, steps, cr, ldc); break;
        case 2: narrow_panel_mem<2>(ar, lda, w, kgroups, steps, cr, ldc); break;
        case 3: narrow_panel_mem<3>(ar, lda, w, kgroups, steps, cr, ldc); break;
        case 4: narrow_panel_mem<4>(ar, lda, w, kgroups, steps, cr, ldc); break;
        case 5: narrow_panel_mem<5>(ar, lda, w, kgroups, steps, cr, ldc); break;
        default: narrow_panel_mem<kNarrowMemRows>(ar, lda, w, kgroups, steps, cr, ldc); break;
      }
    }
    return;
  }
  for (int r = 0; r < rows; r += 3) {
    const int n = rows - r < 3 ? rows - r : 3;
    switch (n) {
      case 1: narrow_panel<1>(a + r * lda, lda, w, kgroups, steps, c + r * ldc, ldc); break;
      case 2: narrow_panel<2>(a + r * lda, lda, w, kgroups, steps, c + r * ldc, ldc); break;
      default: narrow_panel<3>(a + r * lda, lda, w, kgroups, steps, c + r * ldc, ldc); break;
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
