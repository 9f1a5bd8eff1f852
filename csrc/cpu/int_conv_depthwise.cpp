// Depthwise integer conv in NHWC on the CPU (groups == C == O, see int_gemm.h).
//
// There is no reduction over channels, so a dot-product instruction has nothing to reduce:
// the kernel is vectorised over channels instead. For each output pixel an int32 row of C
// accumulators gets sum_taps x[tap, c] * (w[c, tap] - zw[c]), where an out-of-image tap reads
// pad_value; the activation zero point comes off at the end as za * sum_taps (w - zw), exact.
// The weight is re-laid once per call as int32 [taps][C] (w - zw), so the inner loop is a
// unit-stride multiply-add over C that GCC vectorises for each target clone. Pixels are split
// across OpenMP threads; the shared epilogue finishes each pixel's row.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/int_gemm.h"
#include "cpu/int_gemm_kernels.h"
#include "cpu/threading.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ZSQ_DW_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ZSQ_DW_MULTIVERSION
#endif

namespace zsq {
namespace cpu {
namespace {

// acc[c] += x[c] * wt[c] (uint32: wraps like the GEMM paths)
ZSQ_DW_MULTIVERSION void madd_s8(const int8_t* x, const int32_t* wt, int64_t c, uint32_t* acc) {
  for (int64_t i = 0; i < c; ++i) acc[i] += static_cast<uint32_t>(static_cast<int32_t>(x[i]) * wt[i]);
}

ZSQ_DW_MULTIVERSION void madd_u8(const uint8_t* x, const int32_t* wt, int64_t c, uint32_t* acc) {
  for (int64_t i = 0; i < c; ++i) acc[i] += static_cast<uint32_t>(static_cast<int32_t>(x[i]) * wt[i]);
}

ZSQ_DW_MULTIVERSION void madd_const(int32_t v, const int32_t* wt, int64_t c, uint32_t* acc) {
  for (int64_t i = 0; i < c; ++i) acc[i] += static_cast<uint32_t>(v * wt[i]);
}

}  // namespace

void int_depthwise_conv2d_nhwc(const uint8_t* x, ActKind act, const ConvShape& s,
                               int32_t pad_value, const int8_t* w, const IntEpilogue& ep,
                               void* out, int num_threads) {
  const int64_t c = s.c, taps = s.kh * s.kw, m = s.batch * s.oh * s.ow, ohw = s.oh * s.ow;
  if (m <= 0 || c <= 0) return;
  // wt[tap][c] = w[c, tap] - zw[c]; zsum[c] = za * sum_tap wt (what the zero point removes)
  std::vector<int32_t> wt(static_cast<size_t>(taps * c));
  std::vector<uint32_t> zsum(static_cast<size_t>(c), 0u);
  for (int64_t ch = 0; ch < c; ++ch) {
    const int32_t zw = ep.weight_zero_point == nullptr
                           ? 0
                           : ep.weight_zero_point[ep.wzp_per_channel ? ch : 0];
    for (int64_t t = 0; t < taps; ++t) {
      const int32_t v = static_cast<int32_t>(w[ch * taps + t]) - zw;
      wt[t * c + ch] = v;
      zsum[ch] += static_cast<uint32_t>(ep.act_zero_point) * static_cast<uint32_t>(v);
    }
  }
  // The zero points are done here; the epilogue only dequantises and stores.
  IntEpilogue rest = ep;
  rest.act_zero_point = 0;
  rest.weight_zero_point = nullptr;
  intk::TileEpilogue te;
  te.ep = &rest;
  te.k = taps;
  te.n_total = c;
  te.out = out;
  te.avx512 = int_isa_supported(IntIsa::kAvx512Vnni);

  const int threads = resolve_threads(num_threads);
  // At least ~16K multiply-adds per thread, else the fork costs more than it saves.
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, m * c * taps / 16384)));
  const bool is_signed = act == ActKind::kInt8;
  const int32_t pad = is_signed ? static_cast<int32_t>(static_cast<int8_t>(pad_value)) : pad_value;

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    std::vector<uint32_t> acc(static_cast<size_t>(c));
#pragma omp for schedule(static)
    for (int64_t px = 0; px < m; ++px) {
      const int64_t b = px / ohw, rem = px - b * ohw;
      const int64_t oh = rem / s.ow, ow = rem - oh * s.ow;
      std::fill(acc.begin(), acc.end(), 0u);
      for (int64_t kr = 0; kr < s.kh; ++kr) {
        const int64_t ih = oh * s.stride_h - s.pad_h + kr * s.dil_h;
        for (int64_t ks = 0; ks < s.kw; ++ks) {
          const int64_t iw = ow * s.stride_w - s.pad_w + ks * s.dil_w;
          const int32_t* wrow = wt.data() + (kr * s.kw + ks) * c;
          if (ih >= 0 && ih < s.h && iw >= 0 && iw < s.w) {
            const uint8_t* xr = x + ((b * s.h + ih) * s.w + iw) * c;
            if (is_signed) {
              madd_s8(reinterpret_cast<const int8_t*>(xr), wrow, c, acc.data());
            } else {
              madd_u8(xr, wrow, c, acc.data());
            }
          } else if (pad != 0) {
            madd_const(pad, wrow, c, acc.data());
          }
        }
      }
      for (int64_t ch = 0; ch < c; ++ch) acc[ch] -= zsum[ch];
      intk::epilogue_tile(reinterpret_cast<const int32_t*>(acc.data()), c, 1, c, px, 0, nullptr, te);
    }
  }
}

}  // namespace cpu
}  // namespace zsq
