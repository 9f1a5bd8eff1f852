// Integer GEMM and NHWC conv on the CPU (torch-free: raw pointers and sizes; csrc/bind/int_gemm.cpp
// wraps them). These implement the `qgemm` / `qconv2d_nhwc` primitives of
// zsq_engine/ops/int_gemm and ops/int_conv with the fused epilogue of zsq_engine/opspec/epilogue.py.
//
// Packed weight ("panels"). The weight [N, K] of each group is re-laid once for the VNNI dot
// product (4 consecutive k of one output channel in one int32 lane): int8
// [groups][ceil(N_g / 16)][ceil(K / 4)][16][4], padded with zeros (zero weights make any
// padded activation byte harmless), plus int32 colsum [groups * N_g] of the unpacked weight
// (needed by the zero-point correction and by the +128 trick below). The runtime packs a weight
// once and reuses the panels for every call.
//
// Activation domain. vpdpbusd multiplies u8 by s8, so activations enter the micro-kernels as
// u = a + off (off = 128 for int8 / int4 activations, 0 for uint8 / uint4), gathered into a
// thread-local [rows, ceil(K/4)*4] tile; all three ISA paths use that tile. The epilogue
// removes off exactly: sum (a - za)(w - zw) = sum u w - (off + za) colsum(w) - zw (rowsum(a) - K za).
// All of this is int32 arithmetic modulo 2^32, exact whenever the true result fits int32
// (|sum| < 2^31, i.e. K up to ~66000 for full-range 8-bit operands).
#pragma once

#include <cstdint>

namespace zsq {
namespace cpu {

constexpr int kPanelCols = 16;  // output channels per panel (one zmm of int32 accumulators)
constexpr int kPanelK = 4;      // k values per int32 lane

// Instruction set of the micro-kernels. kAuto picks the best one this CPU has.
enum class IntIsa : int { kAuto = 0, kScalar = 1, kAvx2 = 2, kAvx512Vnni = 3 };

// The best ISA available here, and whether `isa` can run here.
IntIsa best_int_isa();
bool int_isa_supported(IntIsa isa);

// How the activation bytes are stored. Packed int4 is 2 values per byte, low nibble first.
enum class ActKind : int { kInt8 = 0, kUint8 = 1, kInt4 = 2, kUint4 = 3 };

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t panel_blocks(int64_t n) { return (n + kPanelCols - 1) / kPanelCols; }
inline int64_t k_groups(int64_t k) { return (k + kPanelK - 1) / kPanelK; }
// bytes of the panels of one group of n output channels with reduction length k
inline int64_t panel_bytes(int64_t n, int64_t k) {
  return panel_blocks(n) * k_groups(k) * kPanelCols * kPanelK;
}

// Packs `groups` weight groups: rows [g * n_g, (g + 1) * n_g) of `w` (int8 [groups * n_g, k]
// with row stride `ldw` bytes, or packed signed int4 [groups * n_g, (k + 1) / 2] when
// `w_int4`) into `panels` (groups * panel_bytes(n_g, k) bytes) and `colsum` (groups * n_g).
void pack_weight_panels(const uint8_t* w, int64_t ldw, bool w_int4, int64_t groups, int64_t n_g,
                        int64_t k, int8_t* panels, int32_t* colsum, int num_threads);

// Output / residual storage of the epilogue.
enum class OutKind : int { kInt32 = 0, kFloat32 = 1, kFloat16 = 2, kBFloat16 = 3, kInt8 = 4, kUint8 = 5 };

// What happens to the int32 accumulator (zsq_engine/ops/epilogue.py, steps 1-5). Pointers are
// null when the option is off; per-channel arrays have N entries, per-row arrays M entries.
struct IntEpilogue {
  // step 1: zero points (za: activation, zw: weight, scalar or per channel)
  int32_t act_zero_point = 0;
  const int32_t* weight_zero_point = nullptr;  // null: zw = 0
  bool wzp_per_channel = false;
  // steps 2-5 (skipped when out == kInt32)
  const float* weight_scale = nullptr;  // [N] or [1]
  bool wscale_per_channel = false;
  const float* act_scale = nullptr;  // [M] or [1]
  bool ascale_per_row = false;
  const float* bias = nullptr;  // [N]
  const void* residual = nullptr;  // [M, N] row-major, stored as residual_kind
  OutKind residual_kind = OutKind::kFloat32;  // kFloat32/16/BFloat16 or kInt8/kUint8
  float residual_scale = 1.0f;
  int32_t residual_zero_point = 0;
  int activation = 0;  // 0 none, 1 relu, 2 relu6
  OutKind out = OutKind::kInt32;
  float out_scale = 1.0f;
  int32_t out_zero_point = 0;
  int32_t quant_min = 0, quant_max = 0;
  // optional second output of an fp32-output epilogue: the same fp32 value quantised with the
  // fake-quant op's arithmetic, clamp(round_half_even(v * inv_scale) + zero_point), so one pass
  // writes a value's float carrier and its codes for the next layer (int8 / uint8, [M, N])
  void* codes = nullptr;
  OutKind codes_kind = OutKind::kUint8;
  float codes_inv_scale = 1.0f;
  int32_t codes_zero_point = 0;
  int32_t codes_min = 0, codes_max = 0;
};

// out[M, N] (row-major, `out`'s element type per ep.out) = epilogue(a @ w^T): a [M, k] stored
// as `act` with row stride `lda` bytes; the weight as packed by pack_weight_panels (groups = 1).
void int_gemm(const uint8_t* a, int64_t lda, ActKind act, int64_t m, int64_t n, int64_t k,
              const int8_t* panels, const int32_t* colsum, const IntEpilogue& ep, void* out,
              IntIsa isa, int num_threads);

struct ConvShape {
  int64_t batch, h, w, c;   // input NHWC, contiguous
  int64_t o, kh, kw;        // output channels, kernel size
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
  int64_t oh, ow;           // output size
};

// Implicit-GEMM conv: x int8/uint8 [B, H, W, C] contiguous (`act` kInt8 or kUint8), weight
// packed per group with k = kh * kw * C / groups in (r, s, c) order; out NHWC [B, OH, OW, O]
// (the epilogue's M = B * OH * OW rows). Out-of-image taps read pad_value.
void int_conv2d_nhwc(const uint8_t* x, ActKind act, const ConvShape& s, int32_t pad_value,
                     const int8_t* panels, const int32_t* colsum, const IntEpilogue& ep, void* out,
                     IntIsa isa, int num_threads);

// Depthwise conv (groups == C == O): w int8 [C, kh, kw] contiguous. Vectorised over channels
// (no reduction over channels, so no dot-product instruction helps); zero points are applied
// inside, then the same epilogue.
void int_depthwise_conv2d_nhwc(const uint8_t* x, ActKind act, const ConvShape& s,
                               int32_t pad_value, const int8_t* w, const IntEpilogue& ep,
                               void* out, int num_threads);

// One core's measured int8 MAC/s with the best dot-product instruction this CPU has
// (AVX-512 VNNI), run for about `seconds`; 0 when the CPU has none.
double int8_peak_macs_per_second(double seconds);

}  // namespace cpu
}  // namespace zsq
