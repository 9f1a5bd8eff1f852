// The fused epilogue of one int32 accumulator tile (zsq_engine/opspec/epilogue.py, steps 1-5).
//
// Each step is its own short loop over a row of at most kChunk columns held in a float buffer
// in L1, so every loop is a plain unit-stride loop that GCC vectorises for each target clone,
// and options that are off cost one branch per row. fp32 arithmetic in the reference order
// (acc * (sa * sw), + bias, + residual, activation, then a true division by out_scale and
// round-half-to-even), each op rounded separately (no fp contraction: see
// fake_quant_common.h), which is what the error budget of epilogue.py assumes.
#include <cstdint>
#include <cstring>

#include "cpu/int_gemm_kernels.h"
#include "cpu/fake_quant_common.h"  // last: turns off fp contraction

namespace zsq {
namespace cpu {
namespace intk {
namespace {

using detail::float_to_bfloat16;
using detail::float_to_half;
using detail::half_to_float;
using detail::bfloat16_to_float;
using detail::round_half_even;

constexpr int64_t kChunk = 64;

// Step 1 in uint32 (wrapping, exact whenever the true result fits int32):
// p = acc - c0 * colsum[n] - zw[n] * (rowsum_u - K * c0)
ZSQ_MULTIVERSION void correct_row(const int32_t* acc, int64_t cols, const int32_t* colsum,
                                  uint32_t c0, const int32_t* zw, bool zw_per_ch, uint32_t row_term,
                                  int32_t* p) {
  if (colsum != nullptr && c0 != 0) {
    for (int64_t j = 0; j < cols; ++j) {
      p[j] = static_cast<int32_t>(static_cast<uint32_t>(acc[j]) - c0 * static_cast<uint32_t>(colsum[j]));
    }
  } else {
    for (int64_t j = 0; j < cols; ++j) p[j] = acc[j];
  }
  if (zw != nullptr) {
    if (zw_per_ch) {
      for (int64_t j = 0; j < cols; ++j) {
        p[j] = static_cast<int32_t>(static_cast<uint32_t>(p[j]) - static_cast<uint32_t>(zw[j]) * row_term);
      }
    } else {
      const uint32_t t = static_cast<uint32_t>(zw[0]) * row_term;
      for (int64_t j = 0; j < cols; ++j) p[j] = static_cast<int32_t>(static_cast<uint32_t>(p[j]) - t);
    }
  }
}

ZSQ_MULTIVERSION void dequant_row(const int32_t* p, int64_t cols, float sa, const float* sw,
                                  bool sw_per_ch, float* v) {
  if (sw_per_ch) {
    for (int64_t j = 0; j < cols; ++j) v[j] = static_cast<float>(p[j]) * (sa * sw[j]);
  } else {
    const float s = sa * sw[0];
    for (int64_t j = 0; j < cols; ++j) v[j] = static_cast<float>(p[j]) * s;
  }
}

ZSQ_MULTIVERSION void add_row(float* v, const float* b, int64_t cols) {
  for (int64_t j = 0; j < cols; ++j) v[j] += b[j];
}

ZSQ_MULTIVERSION void add_residual_row(float* v, const void* res, OutKind kind, float rs,
                                       int32_t rzp, int64_t cols) {
  switch (kind) {
    case OutKind::kFloat16: {
      const uint16_t* r = static_cast<const uint16_t*>(res);
      for (int64_t j = 0; j < cols; ++j) v[j] += half_to_float(r[j]);
      break;
    }
    case OutKind::kBFloat16: {
      const uint16_t* r = static_cast<const uint16_t*>(res);
      for (int64_t j = 0; j < cols; ++j) v[j] += bfloat16_to_float(r[j]);
      break;
    }
    case OutKind::kInt8: {
      const int8_t* r = static_cast<const int8_t*>(res);
      for (int64_t j = 0; j < cols; ++j) v[j] += static_cast<float>(static_cast<int32_t>(r[j]) - rzp) * rs;
      break;
    }
    case OutKind::kUint8: {
      const uint8_t* r = static_cast<const uint8_t*>(res);
      for (int64_t j = 0; j < cols; ++j) v[j] += static_cast<float>(static_cast<int32_t>(r[j]) - rzp) * rs;
      break;
    }
    default: {
      const float* r = static_cast<const float*>(res);
      for (int64_t j = 0; j < cols; ++j) v[j] += r[j];
      break;
    }
  }
}

ZSQ_MULTIVERSION void activate_row(float* v, int act, int64_t cols) {
  if (act == 1) {
    for (int64_t j = 0; j < cols; ++j) v[j] = v[j] > 0.0f ? v[j] : 0.0f;
  } else if (act == 2) {
    for (int64_t j = 0; j < cols; ++j) {
      const float x = v[j] > 0.0f ? v[j] : 0.0f;
      v[j] = x < 6.0f ? x : 6.0f;
    }
  }
}

// Round half to even, add the zero point, clamp; NaN (impossible with finite scales) goes to
// qmin rather than into an undefined float -> int conversion.
ZSQ_MULTIVERSION void requant_row(const float* v, int64_t cols, float so, float zp, float qmin,
                                  float qmax, int32_t* q) {
  for (int64_t j = 0; j < cols; ++j) {
    float x = round_half_even(v[j] / so) + zp;
    x = x > qmin ? x : qmin;
    x = x < qmax ? x : qmax;
    q[j] = static_cast<int32_t>(x);
  }
}

// The fake-quant op's arithmetic (zsq_engine/runtime/quantize.py): multiply by the fp32
// reciprocal (not a division, unlike requant_row), round half to even, add z, clamp.
ZSQ_MULTIVERSION void quantize_row(const float* v, int64_t cols, float inv, float zp, float qmin,
                                   float qmax, int32_t* q) {
  for (int64_t j = 0; j < cols; ++j) {
    float x = round_half_even(v[j] * inv) + zp;
    x = x > qmin ? x : qmin;
    x = x < qmax ? x : qmax;
    q[j] = static_cast<int32_t>(x);
  }
}

ZSQ_MULTIVERSION void store_half_row(const float* v, int64_t cols, uint16_t* out) {
  for (int64_t j = 0; j < cols; ++j) out[j] = static_cast<uint16_t>(float_to_half(v[j]));
}

ZSQ_MULTIVERSION void store_bf16_row(const float* v, int64_t cols, uint16_t* out) {
  for (int64_t j = 0; j < cols; ++j) out[j] = static_cast<uint16_t>(float_to_bfloat16(v[j]));
}

// The runtime's common case in one pass: int8 / uint8 output, no weight zero point, no
// residual. Same steps and roundings as the general path (correct, dequantise, bias, activate,
// requantise), but one vectorised loop instead of six passes over the row: for a stem conv or a
// 1x1 conv with short K the general path cost about as much as the GEMM itself.
template <int ACT, typename Out>
ZSQ_MULTIVERSION void requant_fused_row(const int32_t* acc, int64_t cols, const int32_t* colsum,
                                        uint32_t c0, float sa, const float* sw, bool sw_per_ch,
                                        const float* bias, float so, float zp, float qmin,
                                        float qmax, Out* out) {
  const float s0 = sa * sw[0];
  for (int64_t j = 0; j < cols; ++j) {
    const uint32_t corr = colsum != nullptr ? c0 * static_cast<uint32_t>(colsum[j]) : 0u;
    const int32_t p = static_cast<int32_t>(static_cast<uint32_t>(acc[j]) - corr);
    float v = static_cast<float>(p) * (sw_per_ch ? sa * sw[j] : s0);
    if (bias != nullptr) v += bias[j];
    if (ACT >= 1) v = v > 0.0f ? v : 0.0f;
    if (ACT == 2) v = v < 6.0f ? v : 6.0f;
    float x = round_half_even(v / so) + zp;
    x = x > qmin ? x : qmin;
    x = x < qmax ? x : qmax;
    out[j] = static_cast<Out>(static_cast<int32_t>(x));
  }
}

template <typename Out>
void requant_fused(const int32_t* acc, int64_t cols, const int32_t* colsum, uint32_t c0, float sa,
                   const IntEpilogue& ep, int64_t n0, Out* out) {
  const float* sw = ep.weight_scale + (ep.wscale_per_channel ? n0 : 0);
  const float* bias = ep.bias == nullptr ? nullptr : ep.bias + n0;
  const float so = ep.out_scale, zp = static_cast<float>(ep.out_zero_point);
  const float qmin = static_cast<float>(ep.quant_min), qmax = static_cast<float>(ep.quant_max);
  switch (ep.activation) {
    case 1:
      requant_fused_row<1>(acc, cols, colsum, c0, sa, sw, ep.wscale_per_channel, bias, so, zp, qmin, qmax, out);
      break;
    case 2:
      requant_fused_row<2>(acc, cols, colsum, c0, sa, sw, ep.wscale_per_channel, bias, so, zp, qmin, qmax, out);
      break;
    default:
      requant_fused_row<0>(acc, cols, colsum, c0, sa, sw, ep.wscale_per_channel, bias, so, zp, qmin, qmax, out);
      break;
  }
}

void finish_row(const int32_t* acc, int64_t cols, int64_t m, int64_t n0, uint32_t row_term,
                const TileEpilogue& te) {
  const IntEpilogue& ep = *te.ep;
  const int64_t out_off = m * te.n_total + n0;
  if ((ep.out == OutKind::kInt8 || ep.out == OutKind::kUint8) && ep.weight_zero_point == nullptr &&
      ep.residual == nullptr) {
    const int32_t* colsum = te.colsum == nullptr || te.col_correction == 0 ? nullptr : te.colsum + n0;
    const uint32_t c0 = static_cast<uint32_t>(te.col_correction);
    const float sa = ep.act_scale[ep.ascale_per_row ? m : 0];
    if (ep.out == OutKind::kInt8) {
      requant_fused(acc, cols, colsum, c0, sa, ep, n0, static_cast<int8_t*>(te.out) + out_off);
    } else {
      requant_fused(acc, cols, colsum, c0, sa, ep, n0, static_cast<uint8_t*>(te.out) + out_off);
    }
    return;
  }
  alignas(64) int32_t p[kChunk];
  int32_t* p_dst = ep.out == OutKind::kInt32 ? static_cast<int32_t*>(te.out) + out_off : p;
  const int32_t* zw = ep.weight_zero_point == nullptr
                          ? nullptr
                          : ep.weight_zero_point + (ep.wzp_per_channel ? n0 : 0);
  correct_row(acc, cols, te.colsum == nullptr ? nullptr : te.colsum + n0,
              static_cast<uint32_t>(te.col_correction), zw, ep.wzp_per_channel, row_term, p_dst);
  if (ep.out == OutKind::kInt32) return;

  alignas(64) float v[kChunk];
  const float sa = ep.act_scale[ep.ascale_per_row ? m : 0];
  dequant_row(p, cols, sa, ep.weight_scale + (ep.wscale_per_channel ? n0 : 0), ep.wscale_per_channel, v);
  if (ep.bias != nullptr) add_row(v, ep.bias + n0, cols);
  if (ep.residual != nullptr) {
    const int64_t esize = (ep.residual_kind == OutKind::kInt8 || ep.residual_kind == OutKind::kUint8)
                              ? 1
                              : (ep.residual_kind == OutKind::kFloat32 ? 4 : 2);
    add_residual_row(v, static_cast<const char*>(ep.residual) + out_off * esize, ep.residual_kind,
                     ep.residual_scale, ep.residual_zero_point, cols);
  }
  activate_row(v, ep.activation, cols);
  if (ep.codes != nullptr) {
    alignas(64) int32_t q[kChunk];
    quantize_row(v, cols, ep.codes_inv_scale, static_cast<float>(ep.codes_zero_point),
                 static_cast<float>(ep.codes_min), static_cast<float>(ep.codes_max), q);
    if (ep.codes_kind == OutKind::kInt8) {
      int8_t* o = static_cast<int8_t*>(ep.codes) + out_off;
      for (int64_t j = 0; j < cols; ++j) o[j] = static_cast<int8_t>(q[j]);
    } else {
      uint8_t* o = static_cast<uint8_t*>(ep.codes) + out_off;
      for (int64_t j = 0; j < cols; ++j) o[j] = static_cast<uint8_t>(q[j]);
    }
  }
  switch (ep.out) {
    case OutKind::kFloat32: std::memcpy(static_cast<float*>(te.out) + out_off, v, cols * sizeof(float)); break;
    case OutKind::kFloat16: store_half_row(v, cols, static_cast<uint16_t*>(te.out) + out_off); break;
    case OutKind::kBFloat16: store_bf16_row(v, cols, static_cast<uint16_t*>(te.out) + out_off); break;
    case OutKind::kInt8:
    case OutKind::kUint8: {
      alignas(64) int32_t q[kChunk];
      requant_row(v, cols, ep.out_scale, static_cast<float>(ep.out_zero_point),
                  static_cast<float>(ep.quant_min), static_cast<float>(ep.quant_max), q);
      if (ep.out == OutKind::kInt8) {
        int8_t* o = static_cast<int8_t*>(te.out) + out_off;
        for (int64_t j = 0; j < cols; ++j) o[j] = static_cast<int8_t>(q[j]);
      } else {
        uint8_t* o = static_cast<uint8_t*>(te.out) + out_off;
        for (int64_t j = 0; j < cols; ++j) o[j] = static_cast<uint8_t>(q[j]);
      }
      break;
    }
    default: break;
  }
}

}  // namespace

void epilogue_tile(const int32_t* acc, int64_t ld, int rows, int64_t cols, int64_t row0,
                   int64_t col0, const int32_t* rowsum_u, const TileEpilogue& te) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  const IntEpilogue& e = *te.ep;
  if (te.avx512 && (e.out == OutKind::kInt8 || e.out == OutKind::kUint8) &&
      e.weight_zero_point == nullptr && e.residual == nullptr) {
    RequantTile t;
    t.colsum = te.colsum == nullptr || te.col_correction == 0 ? nullptr : te.colsum + col0;
    t.col_correction = static_cast<uint32_t>(te.col_correction);
    t.act_scale = e.act_scale + (e.ascale_per_row ? row0 : 0);
    t.ascale_per_row = e.ascale_per_row;
    t.weight_scale = e.weight_scale + (e.wscale_per_channel ? col0 : 0);
    t.wscale_per_channel = e.wscale_per_channel;
    t.bias = e.bias == nullptr ? nullptr : e.bias + col0;
    t.activation = e.activation;
    t.out_scale = e.out_scale;
    t.out_zero_point = static_cast<float>(e.out_zero_point);
    t.quant_min = static_cast<float>(e.quant_min);
    t.quant_max = static_cast<float>(e.quant_max);
    t.out = static_cast<uint8_t*>(te.out) + row0 * te.n_total + col0;
    t.out_ld = te.n_total;
    requant_tile_avx512(acc, ld, rows, cols, t);
    return;
  }
#endif
  const bool need_rows = te.ep->weight_zero_point != nullptr;
  const uint32_t k_c0 = static_cast<uint32_t>(te.k) * static_cast<uint32_t>(te.col_correction);
  for (int r = 0; r < rows; ++r) {
    const uint32_t row_term = need_rows ? static_cast<uint32_t>(rowsum_u[r]) - k_c0 : 0u;
    for (int64_t j0 = 0; j0 < cols; j0 += kChunk) {
      const int64_t n = cols - j0 < kChunk ? cols - j0 : kChunk;
      finish_row(acc + r * ld + j0, n, row0 + r, col0 + j0, row_term, te);
    }
  }
}

}  // namespace intk
}  // namespace cpu
}  // namespace zsq
