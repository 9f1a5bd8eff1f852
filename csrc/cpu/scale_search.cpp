// Lp clipping search on the CPU; the contract is in scale_search.h.
//
// Every channel's row is cut into chunks of kChunk elements (a fixed size, so results do not
// depend on the thread count); (channel, chunk) pairs are the parallel work items. Pass 1 takes
// each item's min / max; the candidates' qparams are then computed per channel; pass 2 streams
// each item once in L1-sized blocks and, for every block, runs all candidates over it, adding
// the fp32 error terms into fp64 per-(item, candidate) sums. Rows that are not contiguous
// (per-channel with outer > 1) are first transposed into an fp32 [channels, row] buffer.
#include "cpu/scale_search.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/fake_quant_common.h"  // after the system headers: turns off fp contraction
#include "cpu/vec_math.h"

namespace zsq {
namespace cpu {
namespace {

using detail::Elem;
using detail::imin;
using detail::round_half_even;

constexpr int64_t kChunk = int64_t{1} << 14;  // elements per work item
constexpr int64_t kBlock = 512;               // elements per L1 block (fp32)

struct Candidate {
  float scale, inv, zp;
};

struct Range {
  float qmin, qmax;
};

// torch.pow special-cases these exponents with exact products (the terms then match the
// reference bit for bit); other p use pow_f32 (a few ulp from torch's pow).
enum class PowKind { kOne, kTwo, kThree, kGeneral };

PowKind pow_kind(double p) {
  if (p == 1.0) return PowKind::kOne;
  if (p == 2.0) return PowKind::kTwo;
  if (p == 3.0) return PowKind::kThree;
  return PowKind::kGeneral;
}

template <PowKind K>
ZSQ_INLINE float error_term(float d, const detail::PowF32& p) {
  if constexpr (K == PowKind::kOne) return d;
  if constexpr (K == PowKind::kTwo) return d * d;
  if constexpr (K == PowKind::kThree) return (d * d) * d;
  return detail::pow_f32(d, p);
}

// ------------------------------------------------------------------ pass 1: min / max

struct MinMax {
  float lo, hi;
  bool nan;
};

template <ElemType E>
ZSQ_MULTIVERSION MinMax chunk_min_max(const typename Elem<E>::raw* x, int64_t n) {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  int nan = 0;
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(| : nan)
  for (int64_t j = 0; j < n; ++j) {
    const float v = Elem<E>::load(x[j]);
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
    nan |= v != v ? 1 : 0;
  }
  return {lo, hi, nan != 0};
}

// ------------------------------------------------------------------ pass 2: errors

// sum over the block of |x - fake_quant(x)|^p, terms in fp32 exactly as the reference
template <PowKind K>
ZSQ_INLINE double block_error(const float* __restrict x, int64_t n, const Candidate& cand,
                              const Range& r, const detail::PowF32& p) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float q = round_half_even(x[j] * cand.inv) + cand.zp;
    const bool below = q < r.qmin, above = q > r.qmax;
    const float qc = below ? r.qmin : (above ? r.qmax : q);
    const float diff = x[j] - (qc - cand.zp) * cand.scale;
    sum += static_cast<double>(error_term<K>(diff < 0.0f ? -diff : diff, p));
  }
  return sum;
}

// Adds the errors of every candidate over x[0, n) to err[0, num_candidates).
template <ElemType E, PowKind K>
ZSQ_MULTIVERSION void chunk_errors(const typename Elem<E>::raw* x, int64_t n,
                                   const Candidate* cands, int num_candidates, const Range& r,
                                   const detail::PowF32& p, double* err) {
  float block[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = imin(kBlock, n - b);
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) block[j] = Elem<E>::load(x[b + j]);
    for (int i = 0; i < num_candidates; ++i) err[i] += block_error<K>(block, m, cands[i], r, p);
  }
}

// ------------------------------------------------------------------ candidates

// minmax_qparams of reference/scale_search.py in fp32 for the clipped range [lo, hi].
Candidate candidate_qparams(float lo, float hi, int64_t quant_min, int64_t quant_max,
                            bool symmetric) {
  const float eps = static_cast<float>(1e-8);
  lo = lo < 0.0f ? lo : 0.0f;
  hi = hi > 0.0f ? hi : 0.0f;
  Candidate c;
  if (symmetric) {
    const float absmax = -lo > hi ? -lo : hi;
    const float s = absmax / static_cast<float>(static_cast<double>(quant_max - quant_min) / 2.0);
    c.scale = s < eps ? eps : s;
    const int64_t zp = quant_min < 0 ? 0 : (quant_min + quant_max + 1) / 2;
    c.zp = static_cast<float>(zp);
  } else {
    const float s = (hi - lo) / static_cast<float>(static_cast<double>(quant_max - quant_min));
    c.scale = s < eps ? eps : s;
    const float qmin = static_cast<float>(quant_min), qmax = static_cast<float>(quant_max);
    const float zp = qmin - round_half_even(lo / c.scale);
    c.zp = zp < qmin ? qmin : (zp > qmax ? qmax : zp);
  }
  c.inv = 1.0f / c.scale;
  return c;
}

// ------------------------------------------------------------------ driver

struct Rows {
  ElemType type;
  const void* base;
  int64_t row_stride;  // elements between the starts of consecutive channels' rows
  int64_t row_len;
};

template <class Fn>
void parallel_items(int64_t items, int threads, Fn&& fn) {
  if (threads <= 1) {
    for (int64_t it = 0; it < items; ++it) fn(it);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
  for (int64_t it = 0; it < items; ++it) fn(it);
}

// [channels, outer * inner] fp32 copy of x viewed as [outer, channels, inner]
template <ElemType E>
void transpose_to_rows(const typename Elem<E>::raw* x, const ChannelLayout& l, float* out,
                       int threads) {
  const int64_t row_len = l.outer * l.inner;
  parallel_items(l.channels, threads, [&](int64_t c) {
    for (int64_t o = 0; o < l.outer; ++o) {
      const typename Elem<E>::raw* src = x + (o * l.channels + c) * l.inner;
      float* dst = out + c * row_len + o * l.inner;
      for (int64_t i = 0; i < l.inner; ++i) dst[i] = Elem<E>::load(src[i]);
    }
  });
}

}  // namespace

void scale_search(ElemType type, const void* x, const ChannelLayout& layout_in, int64_t quant_min,
                  int64_t quant_max, int num_candidates, double p, bool symmetric, float* scale,
                  float* zero_point, int num_threads) {
  const ChannelLayout layout = detail::canonical_layout(layout_in);
  const int64_t channels = layout.channels;
  const int64_t row_len = layout.outer * layout.inner;
  for (int64_t c = 0; c < channels; ++c) {
    scale[c] = 1.0f;  // the reference's answer when no candidate has a finite error
    zero_point[c] = 0.0f;
  }
  if (row_len == 0 || channels == 0 || num_candidates <= 0) return;

  const int64_t work = layout.numel() * static_cast<int64_t>(num_candidates);
  const int max_threads = resolve_threads(num_threads);

  Rows rows{type, x, layout.inner, row_len};
  std::vector<float> transposed;
  if (layout.outer > 1) {
    transposed.resize(static_cast<size_t>(layout.numel()));
    const int threads = detail::plan_threads(layout.numel(), num_threads);
    detail::visit_elem_type(type, [&](auto tag) {
      constexpr ElemType E = decltype(tag)::value;
      transpose_to_rows<E>(static_cast<const typename Elem<E>::raw*>(x), layout,
                           transposed.data(), threads);
    });
    rows = Rows{ElemType::kFloat32, transposed.data(), row_len, row_len};
  }

  const int64_t chunks = (row_len + kChunk - 1) / kChunk;
  const int64_t items = channels * chunks;
  const int threads = work < detail::kParallelMinElements
                          ? 1
                          : static_cast<int>(imin(max_threads, items));

  // pass 1: per-item min / max / NaN
  std::vector<float> item_lo(static_cast<size_t>(items)), item_hi(static_cast<size_t>(items));
  std::vector<char> item_nan(static_cast<size_t>(items));
  detail::visit_elem_type(rows.type, [&](auto tag) {
    constexpr ElemType E = decltype(tag)::value;
    using raw = typename Elem<E>::raw;
    const raw* base = static_cast<const raw*>(rows.base);
    parallel_items(items, threads, [&](int64_t it) {
      const int64_t c = it / chunks, k = it % chunks;
      const int64_t begin = k * kChunk, n = imin(kChunk, row_len - begin);
      const MinMax mm = chunk_min_max<E>(base + c * rows.row_stride + begin, n);
      item_lo[it] = mm.lo;
      item_hi[it] = mm.hi;
      item_nan[it] = mm.nan ? 1 : 0;
    });
  });

  // candidates per channel; channels holding NaN keep the default (every error is NaN there)
  std::vector<Candidate> cands(static_cast<size_t>(channels * num_candidates));
  std::vector<char> channel_ok(static_cast<size_t>(channels), 1);
  for (int64_t c = 0; c < channels; ++c) {
    float lo = item_lo[c * chunks], hi = item_hi[c * chunks];
    bool nan = item_nan[c * chunks] != 0;
    for (int64_t k = 1; k < chunks; ++k) {
      lo = item_lo[c * chunks + k] < lo ? item_lo[c * chunks + k] : lo;
      hi = item_hi[c * chunks + k] > hi ? item_hi[c * chunks + k] : hi;
      nan = nan || item_nan[c * chunks + k] != 0;
    }
    channel_ok[c] = nan ? 0 : 1;
    for (int i = 0; i < num_candidates; ++i) {
      // torch multiplies an fp32 tensor by the python float ratio in fp32
      const float ratio = static_cast<float>(1.0 - 0.01 * i);
      cands[c * num_candidates + i] =
          candidate_qparams(lo * ratio, hi * ratio, quant_min, quant_max, symmetric);
    }
  }

  // pass 2: errors per (item, candidate)
  const Range range{static_cast<float>(quant_min), static_cast<float>(quant_max)};
  const detail::PowF32 pow_exponent(p);
  std::vector<double> item_err(static_cast<size_t>(items * num_candidates), 0.0);
  detail::visit_elem_type(rows.type, [&](auto tag) {
    constexpr ElemType E = decltype(tag)::value;
    using raw = typename Elem<E>::raw;
    const raw* base = static_cast<const raw*>(rows.base);
    auto run = [&](auto kind) {
      constexpr PowKind K = decltype(kind)::value;
      parallel_items(items, threads, [&](int64_t it) {
        const int64_t c = it / chunks, k = it % chunks;
        if (!channel_ok[c]) return;
        const int64_t begin = k * kChunk, n = imin(kChunk, row_len - begin);
        chunk_errors<E, K>(base + c * rows.row_stride + begin, n,
                           cands.data() + c * num_candidates, num_candidates, range,
                           pow_exponent, item_err.data() + it * num_candidates);
      });
    };
    switch (pow_kind(p)) {
      case PowKind::kOne: run(std::integral_constant<PowKind, PowKind::kOne>{}); break;
      case PowKind::kTwo: run(std::integral_constant<PowKind, PowKind::kTwo>{}); break;
      case PowKind::kThree: run(std::integral_constant<PowKind, PowKind::kThree>{}); break;
      default: run(std::integral_constant<PowKind, PowKind::kGeneral>{}); break;
    }
  });

  // choose: the first candidate on ties, where a tie allows for the rounding of the fp64 sums
  // (candidates with mathematically equal errors, common for p = 1, may differ in the last
  // bits); an error that is not finite in fp32 (where the reference's fp32 mean would be inf or
  // NaN) never wins
  constexpr double kTieTolerance = 1e-12;
  const double inv_len = 1.0 / static_cast<double>(row_len);
  for (int64_t c = 0; c < channels; ++c) {
    if (!channel_ok[c]) continue;
    double best = std::numeric_limits<double>::infinity();
    for (int i = 0; i < num_candidates; ++i) {
      double sum = 0.0;
      for (int64_t k = 0; k < chunks; ++k) sum += item_err[(c * chunks + k) * num_candidates + i];
      const double err = sum * inv_len;
      if (!std::isfinite(static_cast<float>(err))) continue;
      if (err < best * (1.0 - kTieTolerance)) {
        best = err;
        scale[c] = cands[c * num_candidates + i].scale;
        zero_point[c] = cands[c * num_candidates + i].zp;
      }
    }
  }
}

}  // namespace cpu
}  // namespace zsq
