// Fake-quant, straight-through and LSQ kernels (optionally with QDrop fused in) on the CPU; the
// contract is in fake_quant.h.
//
// Work split: the flat element range is cut into one contiguous part per thread; each part is
// walked as "segments" that share one channel (inner > 1: a run inside a row of `inner`
// elements, scalar qparams) or that run across the channels (inner == 1: the channel is the
// fastest dim, qparams read as vectors). Both kinds of segment loop are plain unit-stride loops
// that GCC vectorises; the LSQ sums go to per-thread double accumulators per channel (a simd
// reduction for scalar segments, elementwise adds for channel-vector segments) and are combined
// in thread order at the end, so no full-size gradient tensor is ever written.
#include "cpu/fake_quant.h"

#include <cstdint>
#include <vector>

#include "cpu/fake_quant_common.h"  // last: turns off fp contraction

namespace zsq {
namespace cpu {
namespace {

using detail::DropConst;
using detail::Elem;
using detail::imin;
using detail::round_half_even;

// Per-channel constants, computed once per call exactly as the reference computes them.
struct ChannelTables {
  std::vector<float> scale, inv, zp, lo_gap, hi_gap;
};

ChannelTables make_tables(const FakeQuantParams& p, int64_t channels) {
  ChannelTables t;
  const auto n = static_cast<size_t>(channels);
  t.scale.resize(n);
  t.inv.resize(n);
  t.zp.resize(n);
  t.lo_gap.resize(n);
  t.hi_gap.resize(n);
  const float qmin = static_cast<float>(p.quant_min), qmax = static_cast<float>(p.quant_max);
  for (size_t c = 0; c < n; ++c) {
    t.scale[c] = p.scale[c];
    t.inv[c] = 1.0f / p.scale[c];
    t.zp[c] = p.zero_point[c];
    t.lo_gap[c] = qmin - p.zero_point[c];
    t.hi_gap[c] = qmax - p.zero_point[c];
  }
  return t;
}

// Qparams of a segment: one channel (scalar) or consecutive channels (one per element).
struct ScalarChannel {
  static constexpr bool kPerElement = false;
  float s, inv, zp, lo_gap, hi_gap;
  ZSQ_INLINE float scale(int64_t) const { return s; }
  ZSQ_INLINE float inverse(int64_t) const { return inv; }
  ZSQ_INLINE float zero_point(int64_t) const { return zp; }
  ZSQ_INLINE float below_gap(int64_t) const { return lo_gap; }
  ZSQ_INLINE float above_gap(int64_t) const { return hi_gap; }
};

struct VectorChannel {
  static constexpr bool kPerElement = true;
  const float* __restrict s;
  const float* __restrict inv;
  const float* __restrict zp;
  const float* __restrict lo_gap;
  const float* __restrict hi_gap;
  ZSQ_INLINE float scale(int64_t j) const { return s[j]; }
  ZSQ_INLINE float inverse(int64_t j) const { return inv[j]; }
  ZSQ_INLINE float zero_point(int64_t j) const { return zp[j]; }
  ZSQ_INLINE float below_gap(int64_t j) const { return lo_gap[j]; }
  ZSQ_INLINE float above_gap(int64_t j) const { return hi_gap[j]; }
};

ZSQ_INLINE ScalarChannel scalar_channel(const ChannelTables& t, int64_t c) {
  return {t.scale[c], t.inv[c], t.zp[c], t.lo_gap[c], t.hi_gap[c]};
}

ZSQ_INLINE VectorChannel vector_channel(const ChannelTables& t, int64_t c0) {
  return {t.scale.data() + c0, t.inv.data() + c0, t.zp.data() + c0, t.lo_gap.data() + c0,
          t.hi_gap.data() + c0};
}

struct Range {
  float qmin, qmax;
};

// Everything a thread needs; pointers are the whole tensors.
struct KernelArgs {
  ChannelLayout layout;
  const ChannelTables* tables;
  Range range;
  DropConst drop;
  float grad_factor;
  const void* x;
  const void* dy;
  void* out;
};

// ------------------------------------------------------------------ per-element math

// q = round(x * inv) + zp (unclamped, fp32)
ZSQ_INLINE float quantize(float x, float inv, float zp) { return round_half_even(x * inv) + zp; }

// torch.clamp: NaN stays NaN
ZSQ_INLINE float clamp_q(float q, const Range& r) {
  const bool below = q < r.qmin, above = q > r.qmax;
  return below ? r.qmin : (above ? r.qmax : q);
}

ZSQ_INLINE bool keep_element(const DropConst& d, uint32_t counter) {
  return detail::uniform01(d.key, counter) < d.p;
}

// ------------------------------------------------------------------ segment loops

template <ElemType E, bool kQDrop, class P>
ZSQ_INLINE void forward_segment(const typename Elem<E>::raw* __restrict x,
                                typename Elem<E>::raw* __restrict y, int64_t n, const P& prm,
                                const Range& r, const DropConst& d, uint32_t counter0) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float xv = Elem<E>::load(x[j]);
    const float zp = prm.zero_point(j);
    const float qc = clamp_q(quantize(xv, prm.inverse(j), zp), r);
    const auto yq = Elem<E>::store((qc - zp) * prm.scale(j));
    if constexpr (kQDrop) {
      y[j] = keep_element(d, counter0 + static_cast<uint32_t>(j)) ? yq : x[j];
    } else {
      y[j] = yq;
    }
  }
}

template <ElemType E, bool kQDrop, class P>
ZSQ_INLINE void ste_segment(const typename Elem<E>::raw* __restrict dy,
                            const typename Elem<E>::raw* __restrict x,
                            typename Elem<E>::raw* __restrict dx, int64_t n, const P& prm,
                            const Range& r, const DropConst& d, uint32_t counter0) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float q = quantize(Elem<E>::load(x[j]), prm.inverse(j), prm.zero_point(j));
    const bool in_range = (q >= r.qmin) & (q <= r.qmax);
    // dy * mask keeps the sign of zero (and NaN) exactly like the reference's multiply
    const auto g = Elem<E>::store(Elem<E>::load(dy[j]) * (in_range ? 1.0f : 0.0f));
    if constexpr (kQDrop) {
      dx[j] = keep_element(d, counter0 + static_cast<uint32_t>(j)) ? g : dy[j];
    } else {
      dx[j] = g;
    }
  }
}

struct LsqTerms {
  float dx, dscale, dzp;
};

// One element of the LSQ backward, in the reference's order of fp32 operations.
ZSQ_INLINE LsqTerms lsq_element(float xv, float g, float s, float inv, float zp, float lo_gap,
                                float hi_gap, const Range& r, float gf) {
  const float q = quantize(xv, inv, zp);
  const bool below = q < r.qmin;
  const bool above = q > r.qmax;
  const bool inside = !(below | above);
  const float y = (clamp_q(q, r) - zp) * s;
  const float ds_inside = (g * (y - xv)) * inv;
  const float ds_clamped = g * (below ? lo_gap : hi_gap);
  LsqTerms t;
  t.dscale = (inside ? ds_inside : ds_clamped) * gf;
  t.dzp = inside ? 0.0f : ((-g) * s) * gf;
  t.dx = g * (inside ? 1.0f : 0.0f);
  return t;
}

template <ElemType E, bool kQDrop, class P>
ZSQ_INLINE void lsq_segment(const typename Elem<E>::raw* __restrict dy,
                            const typename Elem<E>::raw* __restrict x,
                            typename Elem<E>::raw* __restrict dx, int64_t n, const P& prm,
                            const Range& r, float gf, const DropConst& d, uint32_t counter0,
                            double* __restrict acc_scale, double* __restrict acc_zp) {
  if constexpr (P::kPerElement) {
    // the channel is the element index: accumulate elementwise, no reduction
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float g_in = Elem<E>::load(dy[j]);
      bool keep = true;
      if constexpr (kQDrop) keep = keep_element(d, counter0 + static_cast<uint32_t>(j));
      // the reference feeds dy * keep to the LSQ backward: dropped elements add (+-)0
      const float g = kQDrop ? g_in * (keep ? 1.0f : 0.0f) : g_in;
      const LsqTerms t = lsq_element(Elem<E>::load(x[j]), g, prm.scale(j), prm.inverse(j),
                                     prm.zero_point(j), prm.below_gap(j), prm.above_gap(j), r, gf);
      const auto dxq = Elem<E>::store(t.dx);
      dx[j] = (kQDrop && !keep) ? dy[j] : dxq;
      acc_scale[j] += static_cast<double>(t.dscale);
      acc_zp[j] += static_cast<double>(t.dzp);
    }
  } else {
    const float s = prm.scale(0), inv = prm.inverse(0), zp = prm.zero_point(0);
    const float lo_gap = prm.below_gap(0), hi_gap = prm.above_gap(0);
    double sum_scale = 0.0, sum_zp = 0.0;
#pragma omp simd reduction(+ : sum_scale, sum_zp)
    for (int64_t j = 0; j < n; ++j) {
      const float g_in = Elem<E>::load(dy[j]);
      bool keep = true;
      if constexpr (kQDrop) keep = keep_element(d, counter0 + static_cast<uint32_t>(j));
      const float g = kQDrop ? g_in * (keep ? 1.0f : 0.0f) : g_in;
      const LsqTerms t = lsq_element(Elem<E>::load(x[j]), g, s, inv, zp, lo_gap, hi_gap, r, gf);
      const auto dxq = Elem<E>::store(t.dx);
      dx[j] = (kQDrop && !keep) ? dy[j] : dxq;
      sum_scale += static_cast<double>(t.dscale);
      sum_zp += static_cast<double>(t.dzp);
    }
    *acc_scale += sum_scale;
    *acc_zp += sum_zp;
  }
}

// ------------------------------------------------------------------ thread ranges

enum class Op { kForward, kSte, kLsq };

// Processes flat elements [begin, end); acc_* are this thread's [channels] accumulators (LSQ).
template <Op kOp, ElemType E, bool kQDrop>
ZSQ_MULTIVERSION void run_range(const KernelArgs& a, int64_t begin, int64_t end,
                                double* acc_scale, double* acc_zp) {
  using raw = typename Elem<E>::raw;
  const raw* x = static_cast<const raw*>(a.x);
  const raw* dy = static_cast<const raw*>(a.dy);
  raw* out = static_cast<raw*>(a.out);
  const int64_t channels = a.layout.channels, inner = a.layout.inner;
  const ChannelTables& tab = *a.tables;

  int64_t i = begin;
  while (i < end) {
    int64_t n, c;
    bool per_element = inner == 1 && channels > 1;
    if (per_element) {
      c = i % channels;  // first channel of a run across the channels
      n = imin(channels - c, end - i);
    } else {
      const int64_t row = i / inner;
      c = row % channels;
      n = imin((row + 1) * inner, end) - i;
    }
    const uint32_t counter0 = kQDrop ? detail::drop_counter(a.drop, i) : 0u;
    if constexpr (kOp == Op::kForward) {
      if (per_element)
        forward_segment<E, kQDrop>(x + i, out + i, n, vector_channel(tab, c), a.range, a.drop,
                                   counter0);
      else
        forward_segment<E, kQDrop>(x + i, out + i, n, scalar_channel(tab, c), a.range, a.drop,
                                   counter0);
    } else if constexpr (kOp == Op::kSte) {
      if (per_element)
        ste_segment<E, kQDrop>(dy + i, x + i, out + i, n, vector_channel(tab, c), a.range,
                               a.drop, counter0);
      else
        ste_segment<E, kQDrop>(dy + i, x + i, out + i, n, scalar_channel(tab, c), a.range,
                               a.drop, counter0);
    } else {
      if (per_element)
        lsq_segment<E, kQDrop>(dy + i, x + i, out + i, n, vector_channel(tab, c), a.range,
                               a.grad_factor, a.drop, counter0, acc_scale + c, acc_zp + c);
      else
        lsq_segment<E, kQDrop>(dy + i, x + i, out + i, n, scalar_channel(tab, c), a.range,
                               a.grad_factor, a.drop, counter0, acc_scale + c, acc_zp + c);
    }
    i += n;
  }
}

template <Op kOp>
void run(ElemType type, KernelArgs& a, const QDropParams* qdrop, int num_threads,
         float* dscale, float* dzero_point) {
  const int64_t numel = a.layout.numel();
  if (numel == 0) {
    if (kOp == Op::kLsq) {
      for (int64_t c = 0; c < a.layout.channels; ++c) dscale[c] = dzero_point[c] = 0.0f;
    }
    return;
  }
  const int threads = detail::plan_threads(numel, num_threads);
  const int64_t channels = a.layout.channels;
  // per thread: [channels] scale sums then [channels] zero-point sums
  std::vector<double> partial(kOp == Op::kLsq ? static_cast<size_t>(threads) * 2 * channels : 0,
                              0.0);
  detail::visit_elem_type(type, [&](auto tag) {
    constexpr ElemType E = decltype(tag)::value;
    detail::parallel_ranges(numel, threads, [&](int t, int64_t begin, int64_t end) {
      double* acc = kOp == Op::kLsq ? partial.data() + static_cast<size_t>(t) * 2 * channels
                                    : nullptr;
      if (qdrop != nullptr)
        run_range<kOp, E, true>(a, begin, end, acc, acc ? acc + channels : nullptr);
      else
        run_range<kOp, E, false>(a, begin, end, acc, acc ? acc + channels : nullptr);
    });
  });
  if (kOp == Op::kLsq) {
    for (int64_t c = 0; c < channels; ++c) {
      double s = 0.0, z = 0.0;
      for (int t = 0; t < threads; ++t) {
        s += partial[static_cast<size_t>(t) * 2 * channels + c];
        z += partial[static_cast<size_t>(t) * 2 * channels + channels + c];
      }
      dscale[c] = static_cast<float>(s);
      dzero_point[c] = static_cast<float>(z);
    }
  }
}

KernelArgs make_args(const ChannelLayout& layout, const ChannelTables& tables,
                     const FakeQuantParams& params, const QDropParams* qdrop, const void* x,
                     const void* dy, void* out, double grad_factor) {
  KernelArgs a;
  a.layout = detail::canonical_layout(layout);
  a.tables = &tables;
  a.range = {static_cast<float>(params.quant_min), static_cast<float>(params.quant_max)};
  a.drop = detail::make_drop_const(qdrop);
  a.grad_factor = static_cast<float>(grad_factor);
  a.x = x;
  a.dy = dy;
  a.out = out;
  return a;
}

}  // namespace

void fq_forward(ElemType type, const void* x, void* y, const ChannelLayout& layout,
                const FakeQuantParams& params, const QDropParams* qdrop,
                int num_threads) {
  const ChannelTables tables = make_tables(params, layout.channels);
  KernelArgs a = make_args(layout, tables, params, qdrop, x, nullptr, y, 1.0);
  run<Op::kForward>(type, a, qdrop, num_threads, nullptr, nullptr);
}

void fq_backward(ElemType type, const void* dy, const void* x, void* dx,
                 const ChannelLayout& layout, const FakeQuantParams& params,
                 const QDropParams* qdrop, int num_threads) {
  const ChannelTables tables = make_tables(params, layout.channels);
  KernelArgs a = make_args(layout, tables, params, qdrop, x, dy, dx, 1.0);
  run<Op::kSte>(type, a, qdrop, num_threads, nullptr, nullptr);
}

void lsq_backward(ElemType type, const void* dy, const void* x, void* dx, float* dscale,
                  float* dzero_point, const ChannelLayout& layout, const FakeQuantParams& params,
                  double grad_factor, const QDropParams* qdrop, int num_threads) {
  const ChannelTables tables = make_tables(params, layout.channels);
  KernelArgs a = make_args(layout, tables, params, qdrop, x, dy, dx, grad_factor);
  run<Op::kLsq>(type, a, qdrop, num_threads, dscale, dzero_point);
}

}  // namespace cpu
}  // namespace zsq
