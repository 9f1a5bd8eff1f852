// Branch-free exp / log2 / pow for the fake-quant CPU kernels (internal). libm calls stop GCC from
// vectorising a loop; these are plain arithmetic, integer bit tricks and selects, so loops that
// use them vectorise for every target clone. Include after fake_quant_common.h (they rely on its
// no-contraction setting: the polynomials are written for separately rounded mul and add).
//
// Accuracy, max error measured against long double on 2e6 random arguments per function:
//   exp_f32 1.2 ulp (x in [-87, 88]); sigmoid_f32 2.5 ulp (x in [-20, 20]);
//   exp_f64 1.1 ulp (x in [-700, 700]); log2_f64 3.3 ulp (x in [e^-30, 1]);
//   pow_f64 grows with |y log2 x| as any exp2(y log2 x) does: 770 ulp (1.7e-13 relative) for
//   x in [e^-30, 1], y in [0.2, 20]; pow_f32: see the measurement next to it.
#pragma once

#include <cstdint>

#include "cpu/fake_quant_common.h"

namespace zsq {
namespace cpu {
namespace detail {

// Horner evaluation of the first N coefficients: c[0] + c[1] x + ... + c[N-1] x^(N-1), expanded
// at compile time (no inner loop, so the caller's loop vectorises; the coefficients fold to
// constants).
template <int N, int K = 0, class T, int M>
ZSQ_INLINE T horner(T x, const T (&c)[M]) {
  static_assert(N <= M, "more terms than coefficients");
  if constexpr (K == N - 1) {
    return c[K];
  } else {
    return horner<N, K + 1>(x, c) * x + c[K];
  }
}

// 1/k! for k = 0..13
constexpr double kInvFactorial[14] = {
    1.0,
    1.0,
    0.5,
    1.6666666666666666e-01,
    4.1666666666666664e-02,
    8.3333333333333332e-03,
    1.3888888888888889e-03,
    1.9841269841269841e-04,
    2.4801587301587302e-05,
    2.7557319223985893e-06,
    2.7557319223985888e-07,
    2.5052108385441720e-08,
    2.0876756987868100e-09,
    1.6059043836821613e-10,
};

constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.69314718055994531;
// ln 2 split so that n * kLn2Hi is exact for |n| <= 2048 (Cody-Waite range reduction)
constexpr double kLn2Hi = 6.93147180369123816490e-01;
constexpr double kLn2Lo = 1.90821492927058770002e-10;
// 1.5 * 2^52: adding it rounds a double of magnitude < 2^51 to an integer held in the low bits
constexpr double kRoundMagic64 = 6755399441055744.0;
constexpr uint64_t kRoundMagic64Bits = 0x4338000000000000ull;

// 2^n for an integer-valued double n in [-1022, 1023], given t = n + kRoundMagic64
ZSQ_INLINE double pow2_from_magic(double t) {
  const uint64_t n_biased = bit_cast<uint64_t>(t) - kRoundMagic64Bits + 1023u;
  return bit_cast<double>(n_biased << 52);
}

// e^x in fp64.
ZSQ_INLINE double exp_f64(double x) {
  // clamp so that 2^n stays a normal double (NaN passes through the comparisons)
  x = x < -708.0 ? -708.0 : x;
  x = x > 709.0 ? 709.0 : x;
  const double t = x * kLog2e + kRoundMagic64;
  const double n = t - kRoundMagic64;
  const double r = (x - n * kLn2Hi) - n * kLn2Lo;  // |r| <= ln2 / 2
  return horner<14>(r, kInvFactorial) * pow2_from_magic(t);
}

// 2^y in fp64; N Taylor terms of e^(f ln 2) on |f| <= 1/2 (14 terms: full fp64 accuracy).
template <int N = 14>
ZSQ_INLINE double exp2_f64(double y) {
  static_assert(N <= 14, "at most 14 Taylor terms");
  y = y < -1022.0 ? -1022.0 : y;
  y = y > 1023.0 ? 1023.0 : y;
  const double t = y + kRoundMagic64;
  const double n = t - kRoundMagic64;
  const double r = (y - n) * kLn2;
  return horner<N>(r, kInvFactorial) * pow2_from_magic(t);
}

// 2 / (2k + 1) for k = 0..9: ln m = s * sum_k (2 / (2k+1)) z^k with s = (m-1)/(m+1), z = s^2
constexpr double kAtanhSeries[10] = {
    2.0,
    0.66666666666666663,
    0.4,
    0.28571428571428570,
    0.22222222222222221,
    0.18181818181818182,
    0.15384615384615385,
    0.13333333333333333,
    0.11764705882352941,
    0.10526315789473684,
};

// log2(x) for a positive, finite, normal fp64 x; N series terms (10: full fp64 accuracy, 5:
// about 2e-9 relative, enough for an fp32 result).
template <int N = 10>
ZSQ_INLINE double log2_f64(double x) {
  static_assert(N <= 10, "at most 10 series terms");
  const uint64_t bits = bit_cast<uint64_t>(x);
  const uint64_t exponent_field = bits >> 52;
  double m = bit_cast<double>((bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
  const bool high = m > 1.4142135623730951;  // keep m in [sqrt(1/2), sqrt(2)]
  m = high ? m * 0.5 : m;
  // exponent as a double without an int64 -> double conversion (none on AVX2)
  const double e = (bit_cast<double>(0x4330000000000000ull | exponent_field) - 4503599627370496.0) -
                   (high ? 1022.0 : 1023.0);
  const double s = (m - 1.0) / (m + 1.0);
  const double z = s * s;
  return e + (s * horner<N>(z, kAtanhSeries)) * kLog2e;
}

// x^y for x >= 0 (0^y = 0 for y > 0, the only case used), fp64.
ZSQ_INLINE double pow_f64(double x, double y) {
  const double safe = x > 0.0 ? x : 1.0;
  const double r = exp2_f64(y * log2_f64(safe));
  return x > 0.0 ? r : 0.0;
}

// ---------------------------------------------------------------- fp32

constexpr float kInvFactorialF[8] = {1.0f,          1.0f,          0.5f,
                                     1.6666667e-01f, 4.1666668e-02f, 8.3333338e-03f,
                                     1.3888889e-03f, 1.9841270e-04f};

// e^x in fp32 (used by the sigmoid; 2^n stays a normal float).
ZSQ_INLINE float exp_f32(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float t = x * 1.44269504f + magic;
  const float n = t - magic;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  const uint32_t n_biased = bit_cast<uint32_t>(t) - 0x4b400000u + 127u;
  return horner<8>(r, kInvFactorialF) * bit_cast<float>(n_biased << 23);
}

// torch.sigmoid for fp32: 1 / (1 + e^-x)
ZSQ_INLINE float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

ZSQ_INLINE double sigmoid_f64(double x) { return 1.0 / (1.0 + exp_f64(-x)); }

// d^p in fp32 for a fixed exponent p > 0 (scale-search error terms), all in fp32 lanes.
// d = 2^e m (m in [sqrt(1/2), sqrt(2))), d^p = 2^(p e + p log2 m). p e is formed exactly as
// p_hi e (p_hi: p with 16 significant bits, so the product of it and |e| < 256 is exact) plus
// the small p_lo e, and the integer parts are split off before the small remainder meets
// 2^f's polynomial, so the error does not grow with |e|. Overflow gives inf and underflow
// rounds once to a subnormal or 0, as an fp32 pow does. Max error measured against long
// double on 4e6 arguments spanning the whole fp32 range: 1.5 ulp for p = 0.5, 2.7 for 1.5,
// 3.8 for 2.4, 6 for 3.7, 10 for 7 (it grows with p through p * log2 m).
struct PowF32 {
  float p, p_hi, p_lo;
  explicit PowF32(double exponent) {
    p = static_cast<float>(exponent);
    p_hi = bit_cast<float>(bit_cast<uint32_t>(p) & 0xffffff00u);
    p_lo = static_cast<float>(exponent - static_cast<double>(p_hi));
  }
};

constexpr float kAtanhSeriesF[5] = {2.0f, 0.666666687f, 0.4f, 0.285714298f, 0.222222224f};

ZSQ_INLINE float pow_f32(float d, const PowF32& k) {
  const float magic = 12582912.0f;  // 1.5 * 2^23: (v + magic) - magic rounds |v| < 2^22
  const bool tiny = d < 1.17549435e-38f;  // subnormal (or 0): scale into the normal range
  const float ds = tiny ? d * 16777216.0f : d;
  const uint32_t bits = bit_cast<uint32_t>(ds);
  float m = bit_cast<float>((bits & 0x007fffffu) | 0x3f800000u);
  const bool high = m > 1.41421356f;
  m = high ? m * 0.5f : m;
  const int32_t e = static_cast<int32_t>(bits >> 23) - (high ? 126 : 127) - (tiny ? 24 : 0);
  const float fe = static_cast<float>(e);
  const float s = (m - 1.0f) / (m + 1.0f);
  const float log2_m = (s * horner<5>(s * s, kAtanhSeriesF)) * 1.44269502f;
  const float t_hi = k.p_hi * fe;  // exact
  const float n1 = (t_hi + magic) - magic;
  const float f = (t_hi - n1) + (k.p_lo * fe + k.p * log2_m);
  const float n2 = (f + magic) - magic;
  const float r = (f - n2) * 0.693147182f;  // |r| <= ln2 / 2
  float n = n1 + n2;
  n = n < -188.0f ? -188.0f : (n > 189.0f ? 189.0f : n);
  // 2^n in two normal factors, so that the final product rounds once (to inf or a subnormal)
  const bool positive = n > 0.0f;
  const int32_t first = static_cast<int32_t>(n) - (positive ? 63 : -63);
  const float scale1 = bit_cast<float>(static_cast<uint32_t>(first + 127) << 23);
  const float scale2 = positive ? 9.22337204e18f : 1.08420217e-19f;  // 2^63, 2^-63
  const float result = (horner<8>(r, kInvFactorialF) * scale1) * scale2;
  return d > 0.0f ? result : d * 0.0f;  // 0 -> 0, NaN -> NaN
}

}  // namespace detail
}  // namespace cpu
}  // namespace zsq
