// Fused BatchNorm-statistics loss on the CPU; semantics in bn_stats.h.
//
// Work items are groups of all layers at once (one flat OpenMP loop over layers x channels, or
// layers x images x channels), so small layers do not serialise on a per-layer fork/join. A
// group's values are rows of S contiguous floats strided by C * S; each row is reduced by a
// vectorisable `omp simd` loop of double accumulators of x - K, K = the group's first value
// (a shift close to the mean keeps the sum of squares free of cancellation even for
// 1000 + 1e-2 * randn; double makes it exact to ~1e-16 relative anyway).
#include "cpu/bn_stats.h"
#include "cpu/threading.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace zsq {
namespace cpu {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ZSQ_BN_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ZSQ_BN_MULTIVERSION
#endif

// Sum and sum of squares of x - shift over one row.
ZSQ_BN_MULTIVERSION
void row_shifted_sums(const float* __restrict x, int64_t len, double shift, double* s1_out,
                      double* s2_out) {
  double s1 = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t i = 0; i < len; ++i) {
    const double d = static_cast<double>(x[i]) - shift;
    s1 += d;
    s2 += d * d;
  }
  *s1_out += s1;
  *s2_out += s2;
}

ZSQ_BN_MULTIVERSION
void row_affine_grad(const float* __restrict x, float* __restrict out, int64_t len, float mean,
                     float coef_a, float coef_b) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) out[i] = coef_a + coef_b * (x[i] - mean);
}

// Layer of every group: first group of each layer, for a binary search.
struct GroupIndex {
  std::vector<int64_t> first_group;  // num_layers + 1 entries
  std::vector<int64_t> first_channel;

  GroupIndex(const BnLayer* layers, int64_t num_layers, bool per_image) {
    first_group.assign(num_layers + 1, 0);
    first_channel.assign(num_layers + 1, 0);
    for (int64_t l = 0; l < num_layers; ++l) {
      const int64_t groups = per_image ? layers[l].n * layers[l].c : layers[l].c;
      first_group[l + 1] = first_group[l] + groups;
      first_channel[l + 1] = first_channel[l] + layers[l].c;
    }
  }

  int64_t layer_of(int64_t g) const {
    return static_cast<int64_t>(std::upper_bound(first_group.begin(), first_group.end(), g) -
                                first_group.begin()) - 1;
  }
};

// (first row, number of rows, count) of group `local` of layer `L`.
struct GroupRows {
  const float* first;
  int64_t rows;
  int64_t row_stride;
  int64_t channel;
};

inline GroupRows group_rows(const BnLayer& L, int64_t local, bool per_image) {
  if (per_image) {
    const int64_t n = local / L.c;
    const int64_t c = local - n * L.c;
    return {L.data + (n * L.c + c) * L.s, 1, 0, c};
  }
  return {L.data + local * L.s, L.n, L.c * L.s, local};
}

double layer_weight(const BnLayer& L, const BnLossParams& p) {
  if (p.normalize == 0) return 1.0 / static_cast<double>(L.c);
  if (p.normalize == 1) return p.per_image ? 1.0 / static_cast<double>(L.n) : 1.0;
  return 1.0 / static_cast<double>(p.per_image ? L.n * L.c : L.c);
}

}  // namespace

double bn_stats_forward(const BnLayer* layers, int64_t num_layers, const float* running_mean,
                        const float* running_var, const BnLossParams& p, float* saved,
                        int64_t total_groups, int num_threads) {
  const GroupIndex index(layers, num_layers, p.per_image);
  const int threads = resolve_threads(num_threads);
  const double layer_scale = p.layer_mean ? 1.0 / static_cast<double>(num_layers) : 1.0;
  const double eps_in = p.eps_in_std ? p.std_eps : 0.0;
  std::vector<double> terms(static_cast<size_t>(total_groups), 0.0);
  float* out_mean = saved;
  float* out_a = saved + total_groups;
  float* out_b = saved + 2 * total_groups;

#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads) if (threads > 1)
#endif
  for (int64_t g = 0; g < total_groups; ++g) {
    const int64_t l = index.layer_of(g);
    const BnLayer& L = layers[l];
    const GroupRows gr = group_rows(L, g - index.first_group[l], p.per_image);
    const double shift = static_cast<double>(gr.first[0]);
    double s1 = 0.0, s2 = 0.0;
    for (int64_t r = 0; r < gr.rows; ++r) row_shifted_sums(gr.first + r * gr.row_stride, L.s, shift, &s1, &s2);
    const double count = static_cast<double>(gr.rows * L.s);
    const double dof = count - (p.unbiased ? 1.0 : 0.0);
    const double mean_d = s1 / count;
    const double mean = shift + mean_d;
    const double var = std::max(s2 - s1 * mean_d, 0.0) / dof;
    const int64_t ch = index.first_channel[l] + gr.channel;
    const double rm = running_mean[ch];
    const double rv = running_var[ch];
    double spread, target;
    if (p.use_std) {
      spread = std::sqrt(var + eps_in);
      target = std::sqrt(rv + p.std_eps);
    } else {
      spread = var;
      target = rv;
    }
    const double w = layer_scale * layer_weight(L, p);
    const double dm = mean - rm;
    const double ds = spread - target;
    terms[g] = w * (dm * dm + ds * ds);
    out_mean[g] = static_cast<float>(mean);
    out_a[g] = static_cast<float>(w * 2.0 * dm / count);
    out_b[g] = static_cast<float>(p.use_std ? w * 2.0 * ds / (spread * dof) : w * 4.0 * ds / dof);
  }
  double loss = 0.0;  // serial: deterministic whatever the thread count
  for (int64_t g = 0; g < total_groups; ++g) loss += terms[g];
  return loss;
}

void bn_stats_backward(const BnLayer* layers, int64_t num_layers, const float* saved,
                       int64_t total_groups, float grad_out, const BnLossParams& p,
                       int num_threads) {
  const GroupIndex index(layers, num_layers, p.per_image);
  const int threads = resolve_threads(num_threads);
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads) if (threads > 1)
#endif
  for (int64_t g = 0; g < total_groups; ++g) {
    const int64_t l = index.layer_of(g);
    const BnLayer& L = layers[l];
    const GroupRows gr = group_rows(L, g - index.first_group[l], p.per_image);
    const int64_t offset = gr.first - L.data;
    const float mean = saved[g];
    const float coef_a = grad_out * saved[total_groups + g];
    const float coef_b = grad_out * saved[2 * total_groups + g];
    for (int64_t r = 0; r < gr.rows; ++r) {
      const int64_t o = offset + r * gr.row_stride;
      row_affine_grad(L.data + o, L.grad + o, L.s, mean, coef_a, coef_b);
    }
  }
}

}  // namespace cpu
}  // namespace zsq
