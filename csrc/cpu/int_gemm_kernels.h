// Internal pieces of the CPU integer GEMM / conv (int_gemm.h has the API): the per-ISA
// micro-kernels, the fused epilogue of one accumulator tile, and the blocked driver shared by
// the GEMM and the implicit-GEMM conv.
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu/int_gemm.h"

namespace zsq {
namespace cpu {
namespace intk {

// A micro-kernel call computes up to kMaxRows x (kMaxPanels * 16) accumulators.
constexpr int kMaxRows = 6;
constexpr int kMaxPanels = 4;
constexpr int kTileLd = kMaxPanels * kPanelCols;  // row stride of the int32 tile

// c[r * kTileLd + j] = sum_k a[r * lda + k] * w_j[k] for r < rows, j < 16 * panels, where a is
// the u8 activation tile (rows zero-padded to 4 * kgroups) and panel p of the weight starts at
// w + p * panel_stride ([kgroups][16][4] int8). rows <= kMaxRows, panels <= kMaxPanels.
using TileKernel = void (*)(const uint8_t* a, int64_t lda, int rows, const int8_t* w,
                            int64_t panel_stride, int panels, int64_t kgroups, int32_t* c);

void tile_kernel_scalar(const uint8_t* a, int64_t lda, int rows, const int8_t* w,
                        int64_t panel_stride, int panels, int64_t kgroups, int32_t* c);
// Defined only on x86-64 builds; the caller checks the CPU first (int_isa_supported).
void tile_kernel_avx2(const uint8_t* a, int64_t lda, int rows, const int8_t* w,
                      int64_t panel_stride, int panels, int64_t kgroups, int32_t* c);
void tile_kernel_avx512_vnni(const uint8_t* a, int64_t lda, int rows, const int8_t* w,
                             int64_t panel_stride, int panels, int64_t kgroups, int32_t* c);

TileKernel select_tile_kernel(IntIsa isa);  // isa already resolved and supported

// The AVX2 path for 6 rows or more (int_gemm_avx2.cpp; x86-64 builds only, the caller checks
// the CPU; fewer rows use tile_kernel_avx2). The driver widens both operands once and the
// micro-kernel reads them with loads only:
// * widen_tile_u16: dst[i] = src[i] for i < n (the gathered u8 tile as u16, same row layout);
// * widen_panel_i16: one 16-channel panel [kgroups][16][4] int8 -> [2 * kgroups][16][2] int16
//   (k-pair major: the 16 channels' (k, k + 1) values of one k-pair are 32 contiguous int16);
// * madd_rows_avx2: c[r * ldc + j] = sum_k a[r * lda + k] * w_j[k], r < rows, j < 16, over
//   2 * kpairs k, kAvx2Rows rows per register block.
constexpr int kAvx2Rows = 6;
void widen_tile_u16(const uint8_t* src, int64_t n, uint16_t* dst);
void widen_panel_i16(const int8_t* panel, int64_t kgroups, int16_t* dst);
void madd_rows_avx2(const uint16_t* a, int64_t lda, int rows, const int16_t* w, int64_t kpairs,
                    int32_t* c, int64_t ldc);

// The AVX2 path for narrow weights (int_gemm_avx2.cpp; docs/kernels_int.md has the proof).
// vpmaddubsw multiplies u8 activations by s8 weights and adds adjacent products into int16
// with saturation; with u <= 255 a pair sum is exact when 255 * (|w_a| + |w_b|) <= 32767, i.e.
// |w_a| + |w_b| <= 128 (int4 weights always; int8 weights in [-64, 64]). `steps` k-groups
// summed in int16 stay exact while steps * 255 * max_pair <= 32767 (every partial sum is
// bounded by the sum of the absolute terms), then vpmaddwd with ones widens to int32.
// * narrow_panel_steps: the largest |w_a| + |w_b| over the pairs of one packed panel (the
//   pairs vpmaddubsw forms: bytes 4g + 0/1 and 4g + 2/3 of each channel) and from it the
//   number of k-groups the int16 sums may take (at most kNarrowMaxSteps); 0 when the panel
//   must take the vpmaddwd kernels: a pair exceeds 128 (inexact), or the count is under
//   kNarrowMinSteps (P in 65..128: exact, but one k-group per int16 run measured 0.75x the
//   vpmaddwd kernel on the ResNet-18 3x3 convs; two k-groups per run 1.1x).
// * narrow_rows_avx2: c[r * ldc + j] = sum_k a[r * lda + k] * w_j[k], r < rows, j < 16, for one
//   int8 panel read in place (no widening): 6-row register blocks with the int32 sums in c when
//   steps >= kNarrowMemSteps, else 3-row blocks with the int32 sums in registers.
constexpr int kNarrowMaxAct = 255;      // largest u8 activation code
constexpr int kNarrowInt16Max = 32767;
constexpr int kNarrowMaxPair = kNarrowInt16Max / kNarrowMaxAct;  // 128
constexpr int kNarrowMaxSteps = 64;     // int16 sums of a zero panel: any count would do
constexpr int kNarrowMinSteps = 2;      // fewer: the vpmaddwd kernel is faster (measured)
// from this many k-groups per int16 run on, the int32 sums are kept in memory (6-row blocks)
constexpr int kNarrowMemSteps = 4;
constexpr int kNarrowMemRows = 6;
// Under this many rows in a work item (batch-1 GEMMs) the vpmaddwd path stays: the bound scan
// reads each panel once more, which costs as much as the product of 1-3 rows (measured in
// docs/kernels_int.md).
constexpr int kNarrowMinRows = 4;
int narrow_panel_steps(const int8_t* panel, int64_t kgroups);
void narrow_rows_avx2(const uint8_t* a, int64_t lda, int rows, const int8_t* w, int64_t kgroups,
                      int steps, int32_t* c, int64_t ldc);

// The requantising epilogue of a whole tile (int8 / uint8 out, no weight zero point, no
// residual) with AVX-512: same steps and roundings as the scalar path of epilogue_tile. Pointers
// are already offset to the tile's first row / column; act_scale to its first row when
// ascale_per_row.
struct RequantTile {
  const int32_t* colsum = nullptr;  // null: no column correction
  uint32_t col_correction = 0;
  const float* act_scale = nullptr;
  bool ascale_per_row = false;
  const float* weight_scale = nullptr;
  bool wscale_per_channel = false;
  const float* bias = nullptr;
  int activation = 0;
  float out_scale = 1.0f, out_zero_point = 0.0f, quant_min = 0.0f, quant_max = 0.0f;
  uint8_t* out = nullptr;  // int8 or uint8 bytes
  int64_t out_ld = 0;
};
void requant_tile_avx512(const int32_t* acc, int64_t ld, int rows, int64_t cols, const RequantTile& t);

// Measured int8 multiply-accumulates per second of one core running independent 512-bit
// vpdpbusd for about `seconds` (the hardware limit the benchmarks report against).
double vnni_peak_macs_per_second(double seconds);

// Everything the epilogue of a tile needs besides the tile itself.
struct TileEpilogue {
  const IntEpilogue* ep = nullptr;
  const int32_t* colsum = nullptr;  // [n_total]; null when no column correction is needed
  int32_t col_correction = 0;       // off + za: acc -= col_correction * colsum[n]
  int64_t k = 0;                    // reduction length (for the weight zero point term)
  int64_t n_total = 0;              // output row length
  void* out = nullptr;              // [M, n_total]
  // requantising outputs go through requant_tile_avx512 (the caller checked the CPU); the
  // drivers set it from the micro-kernel ISA so forcing a narrower ISA also tests the other path
  bool avx512 = false;
};

// Applies the epilogue to acc [rows][cols] (row stride ld) holding sum u w for output rows
// row0.. and columns col0..; rowsum_u [rows] is sum_k u of each row (read only with a weight
// zero point; may be null otherwise) and stores into te.out.
void epilogue_tile(const int32_t* acc, int64_t ld, int rows, int64_t cols, int64_t row0,
                   int64_t col0, const int32_t* rowsum_u, const TileEpilogue& te);

// Fills `rows` rows of the u8 activation tile for output rows m0.. of group g: tile[r * ldt + k]
// for k < K, and rowsum_u[r] = sum_k tile[r][k] when rowsum_u != null. It writes nothing at
// K <= k < ldt: the weight panels are zero there, so those bytes only ever multiply 0
// (blocked_gemm zeroes the tile once anyway; a per-row memset of the 1-3 padding bytes was a
// library call per pixel).
struct RowGather {
  virtual ~RowGather() = default;
  virtual void gather(int64_t g, int64_t m0, int rows, uint8_t* tile, int64_t ldt,
                      int32_t* rowsum_u) const = 0;
};

// The blocked GEMM: for every group g, out[:, g * n_g : (g + 1) * n_g] = epilogue(A_g W_g^T)
// with A_g supplied by `rows` (m rows of k values) and W_g the group's panels.
void blocked_gemm(const RowGather& rows, int64_t m, int64_t n_g, int64_t k, int64_t groups,
                  const int8_t* panels, const TileEpilogue& te, IntIsa isa, int num_threads);

// dst[i] = src[i] ^ flip (flip 0x80 turns int8 into the u8 domain a + 128), and sum_i p[i].
void copy_flip_bytes(const uint8_t* src, int64_t n, uint8_t flip, uint8_t* dst);
int32_t byte_sum(const uint8_t* p, int64_t n);

// copy_flip_bytes for the short runs of the conv gather (flip is 0 or 0x80), inline: a call
// through the multi-versioned function costs more than flipping a few hundred bytes 16 at a
// time (baseline SSE2 through GCC vector types). For a 3x3 conv on 64 channels the gather
// moves 9 runs of 192 bytes per output pixel, next to 576 cycles of VNNI work.
inline void copy_flip(const uint8_t* src, int64_t n, uint8_t flip, uint8_t* dst) {
  if (flip == 0) {
    std::memcpy(dst, src, static_cast<size_t>(n));
    return;
  }
  if (n >= 512) {
    copy_flip_bytes(src, n, flip, dst);
    return;
  }
  if (n < 8) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<uint8_t>(src[i] ^ 0x80);
    return;
  }
  // The last chunk overlaps the previous one instead of a byte loop (src and dst do not alias,
  // so rewriting a few bytes with the same value is harmless).
  if (n < 16) {
    uint64_t v;
    std::memcpy(&v, src, 8);
    v ^= 0x8080808080808080ull;
    std::memcpy(dst, &v, 8);
    std::memcpy(&v, src + n - 8, 8);
    v ^= 0x8080808080808080ull;
    std::memcpy(dst + n - 8, &v, 8);
    return;
  }
  typedef uint8_t bytes16 __attribute__((vector_size(16)));
  const bytes16 f = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                     0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80};
  bytes16 v;
  for (int64_t i = 0; i + 16 <= n; i += 16) {
    std::memcpy(&v, src + i, 16);
    v ^= f;
    std::memcpy(dst + i, &v, 16);
  }
  std::memcpy(&v, src + n - 16, 16);
  v ^= f;
  std::memcpy(dst + n - 16, &v, 16);
}

// off of the activation domain (int8 / int4 activations are shifted by 128).
inline int32_t act_offset(ActKind act) {
  return (act == ActKind::kInt8 || act == ActKind::kInt4) ? 128 : 0;
}

// Resolves kAuto and checks that `isa` can run here (throws std::invalid_argument otherwise).
IntIsa resolve_isa(IntIsa isa);

}  // namespace intk
}  // namespace cpu
}  // namespace zsq
