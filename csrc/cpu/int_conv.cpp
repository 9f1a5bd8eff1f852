// Implicit-GEMM integer conv in NHWC on the CPU (see int_gemm.h): M = B * OH * OW output
// pixels, N = O / groups per group, K = kh * kw * C / groups in (r, s, c) order, the order of a
// [O, kh, kw, C / groups] weight row. Each work item of the blocked driver gathers its pixels'
// im2col rows straight into its thread-local tile (one contiguous run of kw * C bytes per
// kernel row when groups == 1 and dilation_w == 1, else C / groups bytes per tap; pad_value
// for out-of-image taps), so no im2col matrix is ever materialised, and the
// GEMM micro-kernels and epilogue run unchanged. A 1x1 stride-1 conv gathers one run of C
// bytes per pixel: the plain GEMM on the NHWC rows.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/int_gemm.h"
#include "cpu/int_gemm_kernels.h"

namespace zsq {
namespace cpu {
namespace intk {
namespace {

struct ConvRows final : RowGather {
  const uint8_t* x;
  ConvShape s;
  uint8_t flip;   // 0x80 for int8 input (u = x + 128), 0 for uint8
  uint8_t pad_u;  // pad_value in the u8 domain
  int64_t cg, k;

  void gather(int64_t g, int64_t m0, int rows, uint8_t* tile, int64_t ldt,
              int32_t* rowsum_u) const override {
    const int64_t ohw = s.oh * s.ow;
    // One kernel row of an ungrouped, undilated conv is kw * C contiguous input bytes: copy
    // it as one run (C = 3 for a stem conv would otherwise be 49 copies of 3 bytes per pixel).
    const bool row_runs = s.groups == 1 && s.dil_w == 1;
    // (b, oh, ow) of row m0, then stepped: two 64-bit divisions per pixel cost as much as
    // gathering a stem conv's pixel
    int64_t b = m0 / ohw, oh = (m0 - b * ohw) / s.ow, ow = m0 - b * ohw - oh * s.ow;
    for (int r = 0; r < rows; ++r, ++ow) {
      if (ow == s.ow) {
        ow = 0;
        if (++oh == s.oh) {
          oh = 0;
          ++b;
        }
      }
      const int64_t ih0 = oh * s.stride_h - s.pad_h, iw0 = ow * s.stride_w - s.pad_w;
      const uint8_t* img = x + b * s.h * s.w * s.c + g * cg;
      uint8_t* dst = tile + r * ldt;
      if (row_runs) {
        // taps [lo, hi) of a kernel row fall inside the image
        const int64_t lo = std::min<int64_t>(s.kw, std::max<int64_t>(0, -iw0));
        const int64_t hi = std::max<int64_t>(lo, std::min<int64_t>(s.kw, s.w - iw0));
        const int64_t run = s.kw * cg;
        for (int64_t kr = 0; kr < s.kh; ++kr, dst += run) {
          const int64_t ih = ih0 + kr * s.dil_h;
          if (ih < 0 || ih >= s.h || hi == lo) {
            std::memset(dst, pad_u, static_cast<size_t>(run));
            continue;
          }
          if (lo > 0) std::memset(dst, pad_u, static_cast<size_t>(lo * cg));
          copy_flip(img + (ih * s.w + iw0 + lo) * s.c, (hi - lo) * cg, flip, dst + lo * cg);
          if (hi < s.kw) std::memset(dst + hi * cg, pad_u, static_cast<size_t>((s.kw - hi) * cg));
        }
      } else {
        for (int64_t kr = 0; kr < s.kh; ++kr) {
          const int64_t ih = ih0 + kr * s.dil_h;
          const bool row_in = ih >= 0 && ih < s.h;
          for (int64_t ks = 0; ks < s.kw; ++ks, dst += cg) {
            const int64_t iw = iw0 + ks * s.dil_w;
            if (row_in && iw >= 0 && iw < s.w) {
              copy_flip(img + (ih * s.w + iw) * s.c, cg, flip, dst);
            } else {
              std::memset(dst, pad_u, static_cast<size_t>(cg));
            }
          }
        }
      }
      if (rowsum_u != nullptr) rowsum_u[r] = byte_sum(tile + r * ldt, k);
    }
  }
};

}  // namespace
}  // namespace intk

void int_conv2d_nhwc(const uint8_t* x, ActKind act, const ConvShape& s, int32_t pad_value,
                     const int8_t* panels, const int32_t* colsum, const IntEpilogue& ep, void* out,
                     IntIsa isa, int num_threads) {
  const IntIsa resolved = intk::resolve_isa(isa);
  intk::ConvRows rows;
  rows.x = x;
  rows.s = s;
  rows.flip = act == ActKind::kInt8 ? 0x80 : 0;
  rows.pad_u = static_cast<uint8_t>(static_cast<uint8_t>(pad_value) ^ rows.flip);
  rows.cg = s.c / s.groups;
  rows.k = s.kh * s.kw * rows.cg;
  intk::TileEpilogue te;
  te.ep = &ep;
  te.colsum = colsum;
  te.col_correction = intk::act_offset(act) + ep.act_zero_point;
  te.k = rows.k;
  te.n_total = s.o;
  te.out = out;
  te.avx512 = resolved == IntIsa::kAvx512Vnni;
  intk::blocked_gemm(rows, s.batch * s.oh * s.ow, s.o / s.groups, rows.k, s.groups, panels, te,
                     resolved, num_threads);
}

}  // namespace cpu
}  // namespace zsq
