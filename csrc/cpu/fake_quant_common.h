// Internal helpers shared by the fake-quant CPU kernels (fake_quant.cpp, adaround.cpp,
// scale_search.cpp); not part of the kernel API.
//
// Include this header AFTER every system header of the .cpp file: it switches off
// floating-point contraction for the rest of the translation unit. The kernels must round
// every multiply and add separately, exactly like the sequence of PyTorch ops they reproduce;
// a fused multiply-add (which GCC emits by default for the AVX-512 clones) would change results.
// (GCC also gets -fno-trapping-math, which changes no value: it only lets the vectoriser
// evaluate both arms of a conditional; FP exceptions are never inspected here.)
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/fake_quant.h"
#include "cpu/threading.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
#endif

#define ZSQ_INLINE inline __attribute__((always_inline))

// Hot loops are compiled for AVX-512, AVX2 and the baseline ISA; the loader picks the best
// clone for the machine at run time (GCC function multiversioning). No -march flags needed.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ZSQ_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ZSQ_MULTIVERSION
#endif

namespace zsq {
namespace cpu {
namespace detail {

template <class To, class From>
ZSQ_INLINE To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}

ZSQ_INLINE int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
ZSQ_INLINE int64_t imax(int64_t a, int64_t b) { return a < b ? b : a; }

// ------------------------------------------------------------------ rounding

// round-half-to-even of an fp32 value in the default rounding mode, exactly as torch.round /
// nearbyint, with integer and float ops only (so it vectorises on any x86-64, not only with
// SSE4.1): below 2^23 adding and subtracting 2^23 rounds to an integer; at or above 2^23 every
// float already is one. The sign is restored afterwards (round(-0.3) = -0.0); NaN and inf pass.
ZSQ_INLINE float round_half_even(float v) {
  const uint32_t bits = bit_cast<uint32_t>(v);
  const uint32_t sign = bits & 0x80000000u;
  const float a = bit_cast<float>(bits ^ sign);
  const float rounded = (a + 8388608.0f) - 8388608.0f;
  const float r = a < 8388608.0f ? rounded : a;
  return bit_cast<float>(bit_cast<uint32_t>(r) | sign);
}

// ------------------------------------------------------------------ 16-bit float storage

// fp16 bits (in the low 16 bits of h) -> fp32 (exact; subnormals, inf and NaN payloads kept).
// 32-bit arguments and results keep the vectoriser on 32-bit lanes (16-bit lane operations
// need AVX-512BW, which the avx512f clone may not assume).
ZSQ_INLINE float half_to_float(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  const uint32_t exponent = em >> 10;
  // rebias 15 -> 127: normal numbers; inf/NaN need the all-ones float exponent instead
  const uint32_t normal = (em << 13) + 0x38000000u;
  const uint32_t inf_nan = (em << 13) + 0x70000000u;
  // subnormal (and zero): mantissa * 2^-24, exact in fp32
  const float sub = static_cast<float>(static_cast<int32_t>(em)) * 5.9604644775390625e-8f;
  const uint32_t mag = exponent == 0 ? bit_cast<uint32_t>(sub)
                                     : (exponent == 0x1fu ? inf_nan : normal);
  return bit_cast<float>(mag | sign);
}

// fp32 -> fp16 bits in the low 16 bits, round to nearest even (overflow to inf, NaN -> quiet NaN
// with sign, as c10::Half does).
ZSQ_INLINE uint32_t float_to_half(float f) {
  const uint32_t bits = bit_cast<uint32_t>(f);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t a = bits & 0x7fffffffu;
  // |f| in [2^-14, 2^16): rebias the exponent (127 -> 15) and round at bit 13; a carry out of
  // the mantissa correctly bumps the exponent, up to inf for |f| >= 65520.
  const uint32_t normal = (a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13;
  // |f| < 2^-14: adding 0.5 puts the half-subnormal grid (2^-24) on the float ulp, so the fp32
  // add rounds to nearest even for us.
  const uint32_t sub = bit_cast<uint32_t>(bit_cast<float>(a) + 0.5f) - 0x3f000000u;
  const uint32_t big = a > 0x7f800000u ? 0x7e00u : 0x7c00u;  // NaN : inf / overflow
  const uint32_t mag = a >= 0x47800000u ? big : (a < 0x38800000u ? sub : normal);
  return mag | sign;
}

ZSQ_INLINE float bfloat16_to_float(uint32_t b) { return bit_cast<float>(b << 16); }

// fp32 -> bf16 bits in the low 16 bits, round to nearest even; NaN -> 0x7fc0 (as c10::BFloat16
// does).
ZSQ_INLINE uint32_t float_to_bfloat16(float f) {
  const uint32_t bits = bit_cast<uint32_t>(f);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  return (bits & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded;
}

template <ElemType E>
struct Elem;

template <>
struct Elem<ElemType::kFloat32> {
  using raw = float;
  static ZSQ_INLINE float load(float v) { return v; }
  static ZSQ_INLINE float store(float v) { return v; }
  // the value an op computed in fp32 has after rounding to the storage type
  static ZSQ_INLINE float round(float v) { return v; }
};

template <>
struct Elem<ElemType::kFloat16> {
  using raw = uint16_t;
  static ZSQ_INLINE float load(uint16_t v) { return half_to_float(v); }
  static ZSQ_INLINE uint16_t store(float v) { return static_cast<uint16_t>(float_to_half(v)); }
  static ZSQ_INLINE float round(float v) { return half_to_float(float_to_half(v)); }
};

template <>
struct Elem<ElemType::kBFloat16> {
  using raw = uint16_t;
  static ZSQ_INLINE float load(uint16_t v) { return bfloat16_to_float(v); }
  static ZSQ_INLINE uint16_t store(float v) {
    return static_cast<uint16_t>(float_to_bfloat16(v));
  }
  static ZSQ_INLINE float round(float v) { return bfloat16_to_float(float_to_bfloat16(v)); }
};

template <ElemType E>
using ElemTag = std::integral_constant<ElemType, E>;

// Calls fn(ElemTag<E>{}) for the runtime type.
template <class Fn>
inline void visit_elem_type(ElemType type, Fn&& fn) {
  switch (type) {
    case ElemType::kFloat32: fn(ElemTag<ElemType::kFloat32>{}); break;
    case ElemType::kFloat16: fn(ElemTag<ElemType::kFloat16>{}); break;
    case ElemType::kBFloat16: fn(ElemTag<ElemType::kBFloat16>{}); break;
  }
}

// ------------------------------------------------------------------ QDrop random numbers

// lowbias32 finaliser of zsq_engine/ops/reference/rng.py, in native uint32 arithmetic.
ZSQ_INLINE uint32_t mix32(uint32_t v) {
  v ^= v >> 16;
  v *= 0x7feb352du;
  v ^= v >> 15;
  v *= 0x846ca68bu;
  v ^= v >> 16;
  return v;
}

// uniform in [0, 1) with 24 random bits (exact in fp32) for element counter `idx`.
ZSQ_INLINE float uniform01(uint32_t key, uint32_t idx) {
  const uint32_t bits = mix32(idx ^ key);
  return static_cast<float>(static_cast<int32_t>(bits >> 8)) * 5.9604644775390625e-8f;
}

struct DropConst {
  uint32_t key = 0;     // mix32(uint32(seed))
  uint64_t offset = 0;  // added to the flat index, mod 2^32
  float p = 0.0f;       // keep (quantize) where uniform < p
};

inline DropConst make_drop_const(const QDropParams* q) {
  DropConst d;
  if (q != nullptr) {
    d.key = mix32(static_cast<uint32_t>(static_cast<uint64_t>(q->seed)));
    d.offset = static_cast<uint64_t>(q->offset);
    d.p = static_cast<float>(q->p);
  }
  return d;
}

// uint32 counter of flat element index i
ZSQ_INLINE uint32_t drop_counter(const DropConst& d, int64_t i) {
  return static_cast<uint32_t>(static_cast<uint64_t>(i) + d.offset);
}

// ------------------------------------------------------------------ threading

// Below this many elements an elementwise kernel runs on the calling thread: the OpenMP
// fork/join costs more than it saves.
constexpr int64_t kParallelMinElements = int64_t{1} << 16;
// Each extra thread should get at least this much work.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 14;

// Threads for `work` elements of elementwise work (1 for small tensors).
inline int plan_threads(int64_t work, int num_threads) {
  const int limit = resolve_threads(num_threads);
  if (limit <= 1 || work < kParallelMinElements) return 1;
  const int64_t by_work = work / kMinElementsPerThread;
  return static_cast<int>(imax(1, imin(limit, by_work)));
}

// [begin, end) of part `idx` of `parts` balanced parts of [0, n)
ZSQ_INLINE void split_range(int64_t n, int parts, int idx, int64_t* begin, int64_t* end) {
  const int64_t base = n / parts, extra = n % parts;
  *begin = idx * base + imin(idx, extra);
  *end = *begin + base + (idx < extra ? 1 : 0);
}

// Runs fn(thread_index, begin, end) over balanced contiguous parts of [0, n) on `threads`
// threads (thread_index < threads).
template <class Fn>
inline void parallel_ranges(int64_t n, int threads, Fn&& fn) {
  if (threads <= 1 || n <= 1) {
    fn(0, int64_t{0}, n);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
    const int parts = omp_get_num_threads();
    const int t = omp_get_thread_num();
    int64_t begin, end;
    split_range(n, parts, t, &begin, &end);
    if (begin < end) fn(t, begin, end);
  }
#else
  fn(0, int64_t{0}, n);
#endif
}

// Per-tensor (or single-channel) layouts become one long row.
inline ChannelLayout canonical_layout(const ChannelLayout& layout) {
  if (layout.channels != 1) return layout;
  ChannelLayout flat;
  flat.outer = 1;
  flat.channels = 1;
  flat.inner = layout.numel();
  return flat;
}

}  // namespace detail
}  // namespace cpu
}  // namespace zsq
