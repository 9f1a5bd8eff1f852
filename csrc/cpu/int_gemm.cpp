// CPU integer GEMM: ISA selection, weight panel packing, the blocked driver shared with the
// implicit-GEMM conv, and the GEMM entry point (see int_gemm.h for layouts and numerics).
//
// Blocking. The output is cut into work items (group, block of up to ~100 rows, range of
// 64-column chunks); OpenMP threads take items dynamically. An item first gathers its rows
// into a thread-local u8 tile (K padded to a multiple of 4: 128 KB at most, so it stays in
// L2), then for each 64-column chunk (a weight slab of 64 x K bytes, also L2-resident) walks the
// rows 6 at a time: the micro-kernel accumulates the whole K in registers and the epilogue
// finishes the 6 x 64 tile at once. K is not blocked: no partial sums ever leave registers,
// and the slabs of the layers this serves (K <= 4608 for ResNet convs, 4096 for the GEMMs)
// fit L2. Few rows (batch-1 GEMMs, the 7x7 maps of late conv layers) split N instead, so both
// cores stream different weight slabs. The AVX2 path (no VNNI) walks a chunk panel by panel
// instead: it widens the tile to u16 once per item and each 16-channel panel to int16 once,
// runs every 6-row block against it, and applies the epilogue to all rows of the chunk at the
// end (int_gemm_avx2.cpp says why); a panel whose weights are narrow enough (int4) skips the
// widening and runs the vpmaddubsw kernel on the int8 panel and u8 tile in place.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/int_gemm.h"
#include "cpu/int_gemm_kernels.h"
#include "cpu/threading.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ZSQ_INT_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ZSQ_INT_MULTIVERSION
#endif

namespace zsq {
namespace cpu {

IntIsa best_int_isa() {
  if (int_isa_supported(IntIsa::kAvx512Vnni)) return IntIsa::kAvx512Vnni;
  if (int_isa_supported(IntIsa::kAvx2)) return IntIsa::kAvx2;
  return IntIsa::kScalar;
}

bool int_isa_supported(IntIsa isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const CpuFeatures f = query_cpu_features();
  switch (isa) {
    case IntIsa::kAuto:
    case IntIsa::kScalar: return true;
    case IntIsa::kAvx2: return f.avx2;
    case IntIsa::kAvx512Vnni: return f.avx512f && f.avx512bw && f.avx512_vnni;
  }
  return false;
#else
  return isa == IntIsa::kAuto || isa == IntIsa::kScalar;
#endif
}

namespace intk {

IntIsa resolve_isa(IntIsa isa) {
  if (isa == IntIsa::kAuto) return best_int_isa();
  if (!int_isa_supported(isa)) {
    throw std::invalid_argument("the requested integer-kernel ISA (" +
                                std::to_string(static_cast<int>(isa)) +
                                ") is not supported by this CPU");
  }
  return isa;
}

// Reference micro-kernel: portable, and the oracle the SIMD ones are tested against. uint32
// accumulation wraps like the SIMD adds do.
void tile_kernel_scalar(const uint8_t* a, int64_t lda, int rows, const int8_t* w,
                        int64_t panel_stride, int panels, int64_t kgroups, int32_t* c) {
  for (int r = 0; r < rows; ++r) {
    const uint8_t* ar = a + r * lda;
    for (int p = 0; p < panels; ++p) {
      uint32_t s[kPanelCols] = {0};
      const int8_t* wp = w + p * panel_stride;
      for (int64_t g = 0; g < kgroups; ++g) {
        for (int j = 0; j < kPanelCols; ++j) {
          for (int i = 0; i < kPanelK; ++i) {
            s[j] += static_cast<uint32_t>(static_cast<int32_t>(ar[4 * g + i]) *
                                          static_cast<int32_t>(wp[g * 64 + j * 4 + i]));
          }
        }
      }
      for (int j = 0; j < kPanelCols; ++j) c[r * kTileLd + p * 16 + j] = static_cast<int32_t>(s[j]);
    }
  }
}

TileKernel select_tile_kernel(IntIsa isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (isa == IntIsa::kAvx512Vnni) return tile_kernel_avx512_vnni;
  if (isa == IntIsa::kAvx2) return tile_kernel_avx2;
#endif
  (void)isa;
  return tile_kernel_scalar;
}

ZSQ_INT_MULTIVERSION void copy_flip_bytes(const uint8_t* src, int64_t n, uint8_t flip, uint8_t* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<uint8_t>(src[i] ^ flip);
}

ZSQ_INT_MULTIVERSION int32_t byte_sum(const uint8_t* p, int64_t n) {
  uint32_t s = 0;
  for (int64_t i = 0; i < n; ++i) s += p[i];
  return static_cast<int32_t>(s);
}

void blocked_gemm(const RowGather& rows, int64_t m, int64_t n_g, int64_t k, int64_t groups,
                  const int8_t* panels, const TileEpilogue& te, IntIsa isa, int num_threads) {
  if (m <= 0 || n_g <= 0 || groups <= 0) return;
  const TileKernel kernel = select_tile_kernel(isa);
  const int64_t kg = k_groups(k), ldt = kg * kPanelK;
  const int64_t nb = panel_blocks(n_g), panel_stride = kg * kPanelCols * kPanelK;
  const int64_t group_stride = nb * panel_stride;
  const bool need_rowsum = te.ep->weight_zero_point != nullptr;
  const int threads = resolve_threads(num_threads);

  const bool wide = isa == IntIsa::kAvx2;  // the widened-operand AVX2 path (int_gemm_kernels.h)
  // ZSQ_AVX2_NARROW=0 turns the vpmaddubsw path off (read per call, so that a benchmark can
  // time both kernels on the same weights in one process)
  const char* narrow_env = wide ? std::getenv("ZSQ_AVX2_NARROW") : nullptr;
  const bool narrow = wide && !(narrow_env != nullptr && std::strcmp(narrow_env, "0") == 0);
  // Row tiles: at most ~128 KB of gathered activations, balanced, a multiple of kMaxRows.
  // The AVX2 path takes twice the bytes: with few rows (the 7x7 maps of late layers) the widened
  // panels then serve more row blocks and the weights are read fewer times (measured in
  // docs/kernels_int.md).
  const int64_t kTileBytes = wide ? 256 * 1024 : 128 * 1024;
  constexpr int64_t kMaxTileRows = 96;
  int64_t mb = std::max<int64_t>(kMaxRows, std::min(kMaxTileRows, kTileBytes / ldt) / kMaxRows * kMaxRows);
  const int64_t m_tiles = (m + mb - 1) / mb;
  mb = std::min(mb, ((m + m_tiles - 1) / m_tiles + kMaxRows - 1) / kMaxRows * kMaxRows);
  const int64_t chunks = (nb + kMaxPanels - 1) / kMaxPanels;
  // Split N when there are too few row tiles to keep every thread busy with even shares.
  const int64_t want = 6 * static_cast<int64_t>(threads);
  const int64_t base_items = groups * m_tiles;
  const int64_t n_split = base_items >= want ? 1 : std::min(chunks, (want + base_items - 1) / base_items);
  const int64_t items = base_items * n_split;
  const int nt = static_cast<int>(std::min<int64_t>(threads, items));

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    std::vector<uint8_t> tile(static_cast<size_t>(mb * ldt));  // zeroed: the K padding stays 0
    std::vector<int32_t> rowsum(static_cast<size_t>(mb));
    alignas(64) int32_t acc[kMaxRows * kTileLd];
    // the AVX2 path: the widened tile, one widened panel, and the accumulators of all rows x
    // one chunk (it walks panel by panel so that each widened panel serves every row block);
    // not zeroed: each is written before it is read
    const auto tile16 = std::make_unique_for_overwrite<uint16_t[]>(wide ? static_cast<size_t>(mb * ldt) : 0);
    const auto panel16 = std::make_unique_for_overwrite<int16_t[]>(wide ? static_cast<size_t>(2 * panel_stride) : 0);
    const auto acc_rows = std::make_unique_for_overwrite<int32_t[]>(wide ? static_cast<size_t>(mb * kTileLd) : 0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t ns = item % n_split;
      const int64_t mt = (item / n_split) % m_tiles;
      const int64_t g = item / (n_split * m_tiles);
      const int64_t m0 = mt * mb;
      const int nrows = static_cast<int>(std::min(mb, m - m0));
      rows.gather(g, m0, nrows, tile.data(), ldt, need_rowsum ? rowsum.data() : nullptr);
      const int64_t c_begin = ns * chunks / n_split, c_end = (ns + 1) * chunks / n_split;
      const int8_t* wg = panels + g * group_stride;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
      if (wide) {
        // Per panel: the vpmaddubsw kernel on the int8 panel in place when its weights are
        // narrow enough to be exact (narrow_panel_steps; int4 weights always are), else
        // vpmaddwd - on the operands widened once per item for 6 rows or more, and with the
        // in-loop widening of tile_kernel_avx2 under one register block of rows (batch-1
        // GEMMs), where widening each panel into a buffer first costs more (measured).
        bool tile_widened = false;
        for (int64_t ch = c_begin; ch < c_end; ++ch) {
          const int64_t p0 = ch * kMaxPanels;
          const int np = static_cast<int>(std::min<int64_t>(kMaxPanels, nb - p0));
          const int64_t col0 = p0 * kPanelCols;
          const int64_t cols = std::min<int64_t>(np * kPanelCols, n_g - col0);
          for (int p = 0; p < np; ++p) {
            const int8_t* pw = wg + (p0 + p) * panel_stride;
            int32_t* cp = acc_rows.get() + p * kPanelCols;
            const int steps = narrow && nrows >= kNarrowMinRows ? narrow_panel_steps(pw, kg) : 0;
            if (steps > 0) {
              narrow_rows_avx2(tile.data(), ldt, nrows, pw, kg, steps, cp, kTileLd);
            } else if (nrows >= kAvx2Rows) {
              if (!tile_widened) {
                widen_tile_u16(tile.data(), nrows * ldt, tile16.get());
                tile_widened = true;
              }
              widen_panel_i16(pw, kg, panel16.get());
              madd_rows_avx2(tile16.get(), ldt, nrows, panel16.get(), 2 * kg, cp, kTileLd);
            } else {
              tile_kernel_avx2(tile.data(), ldt, nrows, pw, panel_stride, 1, kg, cp);
            }
          }
          epilogue_tile(acc_rows.get(), kTileLd, nrows, cols, m0, g * n_g + col0, rowsum.data(), te);
        }
        continue;
      }
#endif
      for (int64_t ch = c_begin; ch < c_end; ++ch) {
        const int64_t p0 = ch * kMaxPanels;
        const int np = static_cast<int>(std::min<int64_t>(kMaxPanels, nb - p0));
        const int64_t col0 = p0 * kPanelCols;
        const int64_t cols = std::min<int64_t>(np * kPanelCols, n_g - col0);
        for (int r0 = 0; r0 < nrows; r0 += kMaxRows) {
          const int mr = std::min(kMaxRows, nrows - r0);
          kernel(tile.data() + r0 * ldt, ldt, mr, wg + p0 * panel_stride, panel_stride, np, kg, acc);
          epilogue_tile(acc, kTileLd, mr, cols, m0 + r0, g * n_g + col0, rowsum.data() + r0, te);
        }
      }
    }
  }
}

namespace {

// Rows of a GEMM activation matrix (int8 / uint8, or packed int4 / uint4).
struct GemmRows final : RowGather {
  const uint8_t* a;
  int64_t lda;
  ActKind act;
  int64_t k;

  void gather(int64_t, int64_t m0, int rows, uint8_t* tile, int64_t ldt,
              int32_t* rowsum_u) const override {
    for (int r = 0; r < rows; ++r) {
      const uint8_t* src = a + (m0 + r) * lda;
      uint8_t* dst = tile + r * ldt;
      switch (act) {
        case ActKind::kInt8: copy_flip_bytes(src, k, 0x80, dst); break;
        case ActKind::kUint8: std::memcpy(dst, src, static_cast<size_t>(k)); break;
        case ActKind::kInt4:
          // nibble v in two's complement -> v + 128 = (nibble ^ 8) + 120
          for (int64_t i = 0; i < k; ++i) {
            dst[i] = static_cast<uint8_t>((((src[i >> 1] >> ((i & 1) * 4)) & 15) ^ 8) + 120);
          }
          break;
        case ActKind::kUint4:
          for (int64_t i = 0; i < k; ++i) dst[i] = static_cast<uint8_t>((src[i >> 1] >> ((i & 1) * 4)) & 15);
          break;
      }
      if (rowsum_u != nullptr) rowsum_u[r] = byte_sum(dst, k);
    }
  }
};

}  // namespace
}  // namespace intk

double int8_peak_macs_per_second(double seconds) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (int_isa_supported(IntIsa::kAvx512Vnni)) return intk::vnni_peak_macs_per_second(seconds);
#endif
  (void)seconds;
  return 0.0;
}

void pack_weight_panels(const uint8_t* w, int64_t ldw, bool w_int4, int64_t groups, int64_t n_g,
                        int64_t k, int8_t* panels, int32_t* colsum, int num_threads) {
  const int64_t nb = panel_blocks(n_g), kg = k_groups(k);
  const int64_t panel_stride = kg * kPanelCols * kPanelK;
  const int64_t blocks = groups * nb;
  const int threads = num_threads > 0 ? num_threads : 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && blocks > 1)
  for (int64_t gb = 0; gb < blocks; ++gb) {
    const int64_t g = gb / nb, b = gb % nb;
    int8_t* dst = panels + g * nb * panel_stride + b * panel_stride;
    std::memset(dst, 0, static_cast<size_t>(panel_stride));
    for (int j = 0; j < kPanelCols; ++j) {
      const int64_t n = b * kPanelCols + j;
      if (n >= n_g) break;
      const uint8_t* row = w + (g * n_g + n) * ldw;
      int32_t sum = 0;
      for (int64_t kk = 0; kk < k; ++kk) {
        int32_t v;
        if (w_int4) {
          v = static_cast<int32_t>(((row[kk >> 1] >> ((kk & 1) * 4)) & 15) ^ 8) - 8;
        } else {
          v = static_cast<int8_t>(row[kk]);
        }
        dst[(kk / kPanelK) * kPanelCols * kPanelK + j * kPanelK + kk % kPanelK] = static_cast<int8_t>(v);
        sum += v;
      }
      colsum[g * n_g + n] = sum;
    }
  }
}

void int_gemm(const uint8_t* a, int64_t lda, ActKind act, int64_t m, int64_t n, int64_t k,
              const int8_t* panels, const int32_t* colsum, const IntEpilogue& ep, void* out,
              IntIsa isa, int num_threads) {
  const IntIsa resolved = intk::resolve_isa(isa);
  intk::GemmRows rows;
  rows.a = a;
  rows.lda = lda;
  rows.act = act;
  rows.k = k;
  intk::TileEpilogue te;
  te.ep = &ep;
  te.colsum = colsum;
  te.col_correction = intk::act_offset(act) + ep.act_zero_point;
  te.k = k;
  te.n_total = n;
  te.out = out;
  te.avx512 = resolved == IntIsa::kAvx512Vnni;
  intk::blocked_gemm(rows, m, n, k, 1, panels, te, resolved, num_threads);
}

}  // namespace cpu
}  // namespace zsq
