// AdaRound kernels on the CPU; the contract is in adaround.h. Same work split as
// fake_quant.cpp: one contiguous part of the flat range per thread, walked as segments of one
// channel (scalar qparams) or across the channels (inner == 1, qparams as vectors).
#include "cpu/adaround.h"

#include <cstdint>
#include <vector>

#include "cpu/fake_quant_common.h"  // after the system headers: turns off fp contraction
#include "cpu/vec_math.h"

namespace zsq {
namespace cpu {
namespace {

using detail::Elem;
using detail::imin;

constexpr float kZetaMinusGamma = 1.2f;  // fp32(1.1 - (-0.1)), as torch casts the scalar
constexpr float kGamma = -0.1f;
constexpr double kZetaMinusGamma64 = 1.1 - (-0.1);
constexpr double kGamma64 = -0.1;

struct Range {
  float qmin, qmax;
};

// torch.clamp (NaN stays NaN)
ZSQ_INLINE float clampf(float v, float lo, float hi) {
  const bool below = v < lo, above = v > hi;
  return below ? lo : (above ? hi : v);
}

ZSQ_INLINE double clampd(double v, double lo, double hi) {
  const bool below = v < lo, above = v > hi;
  return below ? lo : (above ? hi : v);
}

// Per-channel qparams: fp32 values and, for the forward, the values rounded to the storage type.
struct Tables {
  std::vector<float> scale, zp;
};

Tables make_tables(const FakeQuantParams& p, int64_t channels, float (*round_fn)(float)) {
  Tables t;
  t.scale.resize(static_cast<size_t>(channels));
  t.zp.resize(static_cast<size_t>(channels));
  for (int64_t c = 0; c < channels; ++c) {
    t.scale[c] = round_fn(p.scale[c]);
    t.zp[c] = round_fn(p.zero_point[c]);
  }
  return t;
}

float identity(float v) { return v; }

// Segment qparams: one channel, or one channel per element.
struct ScalarQ {
  static constexpr bool kPerElement = false;
  float s, zp;
  ZSQ_INLINE float scale(int64_t) const { return s; }
  ZSQ_INLINE float zero_point(int64_t) const { return zp; }
};

struct VectorQ {
  static constexpr bool kPerElement = true;
  const float* __restrict s;
  const float* __restrict zp;
  ZSQ_INLINE float scale(int64_t j) const { return s[j]; }
  ZSQ_INLINE float zero_point(int64_t j) const { return zp[j]; }
};

struct Args {
  ChannelLayout layout;
  const Tables* tables;
  Range range;
  const void* w_floor;
  const void* alpha;
  const void* dy;
  void* out;
};

// ------------------------------------------------------------------ forward

// The reference's op sequence in the storage type E (each fp32 result rounded to E): torch
// multiplies by the python scalar zeta - gamma in fp32 but adds gamma after casting it to E.
template <ElemType E, bool kHard>
ZSQ_INLINE float adaround_value(float wf, float a, float s, float zp, const Range& r) {
  using T = Elem<E>;
  float h;
  if constexpr (kHard) {
    h = a >= 0.0f ? 1.0f : 0.0f;
  } else {
    const float sig = T::round(detail::sigmoid_f32(a));
    const float h_lin = T::round(T::round(sig * kZetaMinusGamma) + T::round(kGamma));
    h = clampf(h_lin, 0.0f, 1.0f);
  }
  const float v = T::round(T::round(wf + h) + zp);
  return T::round(T::round(clampf(v, r.qmin, r.qmax) - zp) * s);
}

template <ElemType E, bool kHard, class Q>
ZSQ_INLINE void forward_segment(const typename Elem<E>::raw* __restrict wf,
                                const typename Elem<E>::raw* __restrict alpha,
                                typename Elem<E>::raw* __restrict w, int64_t n, const Q& q,
                                const Range& r) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    w[j] = Elem<E>::store(adaround_value<E, kHard>(Elem<E>::load(wf[j]), Elem<E>::load(alpha[j]),
                                                   q.scale(j), q.zero_point(j), r));
  }
}

// ------------------------------------------------------------------ backward (fp32 math)

struct BackwardTerms {
  float dalpha, dscale;
};

// One element of the soft-rounding backward, in the reference's order of fp32 operations.
ZSQ_INLINE BackwardTerms backward_element(float g, float wf, float a, float s, float zp,
                                          const Range& r) {
  const float sig = detail::sigmoid_f32(a);
  const float h_lin = sig * kZetaMinusGamma + kGamma;
  const float h = clampf(h_lin, 0.0f, 1.0f);
  const float v = (wf + h) + zp;
  const float vc = clampf(v, r.qmin, r.qmax);
  // "x lies in [lo, hi]" written as clamp(x) == x (false for NaN too): plain bool masks of
  // fp32 and fp64 compares mixed in one loop keep GCC from vectorising it
  const float live = (vc == v ? 1.0f : 0.0f) * (h == h_lin ? 1.0f : 0.0f);
  BackwardTerms t;
  t.dalpha = ((((g * s) * kZetaMinusGamma) * sig) * (1.0f - sig)) * live;
  t.dscale = g * (vc - zp);
  return t;
}

template <ElemType E, class Q>
ZSQ_INLINE void backward_segment(const typename Elem<E>::raw* __restrict dy,
                                 const typename Elem<E>::raw* __restrict wf,
                                 const typename Elem<E>::raw* __restrict alpha,
                                 typename Elem<E>::raw* __restrict dalpha, int64_t n, const Q& q,
                                 const Range& r, double* __restrict acc) {
  using T = Elem<E>;
  if constexpr (Q::kPerElement) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const BackwardTerms t = backward_element(T::load(dy[j]), T::load(wf[j]), T::load(alpha[j]),
                                               q.scale(j), q.zero_point(j), r);
      dalpha[j] = T::store(t.dalpha);
      acc[j] += static_cast<double>(t.dscale);
    }
  } else {
    const float s = q.scale(0), zp = q.zero_point(0);
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      const BackwardTerms t =
          backward_element(T::load(dy[j]), T::load(wf[j]), T::load(alpha[j]), s, zp, r);
      dalpha[j] = T::store(t.dalpha);
      sum += static_cast<double>(t.dscale);
    }
    *acc += sum;
  }
}

// ------------------------------------------------------------------ thread ranges

enum class Op { kForwardSoft, kForwardHard, kBackward };

template <Op kOp, ElemType E>
ZSQ_MULTIVERSION void run_range(const Args& a, int64_t begin, int64_t end, double* acc) {
  using raw = typename Elem<E>::raw;
  const raw* wf = static_cast<const raw*>(a.w_floor);
  const raw* alpha = static_cast<const raw*>(a.alpha);
  const raw* dy = static_cast<const raw*>(a.dy);
  raw* out = static_cast<raw*>(a.out);
  const int64_t channels = a.layout.channels, inner = a.layout.inner;
  const Tables& tab = *a.tables;
  int64_t i = begin;
  while (i < end) {
    const bool per_element = inner == 1 && channels > 1;
    int64_t n, c;
    if (per_element) {
      c = i % channels;
      n = imin(channels - c, end - i);
    } else {
      const int64_t row = i / inner;
      c = row % channels;
      n = imin((row + 1) * inner, end) - i;
    }
    const VectorQ vq{tab.scale.data() + c, tab.zp.data() + c};
    const ScalarQ sq{tab.scale[c], tab.zp[c]};
    if constexpr (kOp == Op::kBackward) {
      if (per_element)
        backward_segment<E>(dy + i, wf + i, alpha + i, out + i, n, vq, a.range, acc + c);
      else
        backward_segment<E>(dy + i, wf + i, alpha + i, out + i, n, sq, a.range, acc + c);
    } else {
      constexpr bool kHard = kOp == Op::kForwardHard;
      if (per_element)
        forward_segment<E, kHard>(wf + i, alpha + i, out + i, n, vq, a.range);
      else
        forward_segment<E, kHard>(wf + i, alpha + i, out + i, n, sq, a.range);
    }
    i += n;
  }
}

template <Op kOp>
void run(ElemType type, Args& a, int num_threads, float* dscale) {
  const int64_t numel = a.layout.numel();
  const int64_t channels = a.layout.channels;
  const int threads = detail::plan_threads(numel, num_threads);
  std::vector<double> partial(
      kOp == Op::kBackward ? static_cast<size_t>(threads) * static_cast<size_t>(channels) : 0,
      0.0);
  if (numel > 0) {
    detail::visit_elem_type(type, [&](auto tag) {
      constexpr ElemType E = decltype(tag)::value;
      detail::parallel_ranges(numel, threads, [&](int t, int64_t begin, int64_t end) {
        double* acc = kOp == Op::kBackward ? partial.data() + static_cast<size_t>(t) * channels
                                           : nullptr;
        run_range<kOp, E>(a, begin, end, acc);
      });
    });
  }
  if (kOp == Op::kBackward) {
    for (int64_t c = 0; c < channels; ++c) {
      double s = 0.0;
      for (int t = 0; t < threads; ++t) s += partial[static_cast<size_t>(t) * channels + c];
      dscale[c] = static_cast<float>(s);
    }
  }
}

float (*rounding_of(ElemType type))(float) {
  switch (type) {
    case ElemType::kFloat16: return [](float v) { return Elem<ElemType::kFloat16>::round(v); };
    case ElemType::kBFloat16: return [](float v) { return Elem<ElemType::kBFloat16>::round(v); };
    default: return identity;
  }
}

// ------------------------------------------------------------------ regulariser (fp64 math)

// sigmoid(a) * (zeta - gamma) + gamma before the clamp
ZSQ_INLINE double rectified_sigmoid_lin(double sig) { return sig * kZetaMinusGamma64 + kGamma64; }

// torch.pow special-cases these exponents (exact products / identity)
enum class PowKind { kOne, kTwo, kGeneral };

ZSQ_INLINE PowKind pow_kind(double e) {
  return e == 1.0 ? PowKind::kOne : (e == 2.0 ? PowKind::kTwo : PowKind::kGeneral);
}

template <PowKind K>
ZSQ_INLINE double pow_special(double x, double e) {
  if constexpr (K == PowKind::kOne) return x;
  if constexpr (K == PowKind::kTwo) return x * x;
  return detail::pow_f64(x, e);
}

template <ElemType E, PowKind K>
ZSQ_MULTIVERSION double reg_forward_range(const typename Elem<E>::raw* alpha, int64_t n,
                                          double beta) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const double sig = detail::sigmoid_f64(Elem<E>::load(alpha[j]));
    const double h = clampd(rectified_sigmoid_lin(sig), 0.0, 1.0);
    const double t = 2.0 * h - 1.0;
    sum += 1.0 - pow_special<K>(t < 0.0 ? -t : t, beta);
  }
  return sum;
}

// d reg / d alpha = dreg_dt * 2 * (zeta - gamma) * sig * (1 - sig) * live, times grad_out
template <ElemType E, PowKind K>
ZSQ_MULTIVERSION void reg_backward_range(const typename Elem<E>::raw* __restrict alpha,
                                         typename Elem<E>::raw* __restrict dalpha, int64_t n,
                                         double beta, double grad_out) {
  const double beta_m1 = beta - 1.0;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const double sig = detail::sigmoid_f64(Elem<E>::load(alpha[j]));
    const double h_lin = rectified_sigmoid_lin(sig);
    const double h = clampd(h_lin, 0.0, 1.0);
    const double t = 2.0 * h - 1.0;
    const double abs_t = t < 0.0 ? -t : t;
    const double sign_t = t > 0.0 ? 1.0 : (t < 0.0 ? -1.0 : 0.0);
    const double dreg_dt = t == 0.0 ? 0.0 : ((-beta) * pow_special<K>(abs_t, beta_m1)) * sign_t;
    const double live = h == h_lin ? 1.0 : 0.0;  // h_lin in [0, 1] (see backward_element)
    const double g = ((((dreg_dt * 2.0) * kZetaMinusGamma64) * sig) * (1.0 - sig)) * live;
    // the reference rounds fp64 -> alpha's dtype through fp32, as torch's casts do
    dalpha[j] = Elem<E>::store(static_cast<float>(g * grad_out));
  }
}

template <class Fn>
void visit_pow_kind(PowKind k, Fn&& fn) {
  switch (k) {
    case PowKind::kOne: fn(std::integral_constant<PowKind, PowKind::kOne>{}); break;
    case PowKind::kTwo: fn(std::integral_constant<PowKind, PowKind::kTwo>{}); break;
    default: fn(std::integral_constant<PowKind, PowKind::kGeneral>{}); break;
  }
}

}  // namespace

void adaround_forward(ElemType type, const void* w_floor, const void* alpha, void* w,
                      const ChannelLayout& layout, const FakeQuantParams& params, bool hard,
                      int num_threads) {
  const auto round_fn = rounding_of(type);
  const Tables tables = make_tables(params, layout.channels, round_fn);
  Args a{detail::canonical_layout(layout), &tables,
         {round_fn(static_cast<float>(params.quant_min)),
          round_fn(static_cast<float>(params.quant_max))},
         w_floor, alpha, nullptr, w};
  if (hard)
    run<Op::kForwardHard>(type, a, num_threads, nullptr);
  else
    run<Op::kForwardSoft>(type, a, num_threads, nullptr);
}

void adaround_backward(ElemType type, const void* dy, const void* w_floor, const void* alpha,
                       void* dalpha, float* dscale, const ChannelLayout& layout,
                       const FakeQuantParams& params, int num_threads) {
  const Tables tables = make_tables(params, layout.channels, identity);
  Args a{detail::canonical_layout(layout), &tables,
         {static_cast<float>(params.quant_min), static_cast<float>(params.quant_max)},
         w_floor, alpha, dy, dalpha};
  run<Op::kBackward>(type, a, num_threads, dscale);
}

float adaround_reg_forward(ElemType type, const void* alpha, int64_t n, double beta,
                           int num_threads) {
  const int threads = detail::plan_threads(n, num_threads);
  std::vector<double> partial(static_cast<size_t>(threads), 0.0);
  if (n > 0) {
    detail::visit_elem_type(type, [&](auto tag) {
      constexpr ElemType E = decltype(tag)::value;
      using raw = typename Elem<E>::raw;
      const raw* a = static_cast<const raw*>(alpha);
      visit_pow_kind(pow_kind(beta), [&](auto kind) {
        constexpr PowKind K = decltype(kind)::value;
        detail::parallel_ranges(n, threads, [&](int t, int64_t begin, int64_t end) {
          partial[t] = reg_forward_range<E, K>(a + begin, end - begin, beta);
        });
      });
    });
  }
  double sum = 0.0;
  for (double v : partial) sum += v;
  return static_cast<float>(sum);
}

void adaround_reg_backward(ElemType type, double grad_out, const void* alpha, void* dalpha,
                           int64_t n, double beta, int num_threads) {
  if (n <= 0) return;
  const int threads = detail::plan_threads(n, num_threads);
  detail::visit_elem_type(type, [&](auto tag) {
    constexpr ElemType E = decltype(tag)::value;
    using raw = typename Elem<E>::raw;
    const raw* a = static_cast<const raw*>(alpha);
    raw* d = static_cast<raw*>(dalpha);
    visit_pow_kind(pow_kind(beta - 1.0), [&](auto kind) {
      constexpr PowKind K = decltype(kind)::value;
      detail::parallel_ranges(n, threads, [&](int, int64_t begin, int64_t end) {
        reg_backward_range<E, K>(a + begin, d + begin, end - begin, beta, grad_out);
      });
    });
  });
}

}  // namespace cpu
}  // namespace zsq
