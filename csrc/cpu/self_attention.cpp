// Self-attention (q = k = v, scale 1) forward and backward on the CPU; see self_attention.h.
//
// Layout per image: ut = u transposed to [C, L] for the score rows (a loop over the L
// positions), u itself ([L, C]) for the weighted sums of rows (output, query gradient) and the
// key / value gradient accumulator. Every inner loop has unit stride and vectorises for each target clone; partial
// sums live in 16-lane blocks because the vectoriser may not reorder a plain float sum.
#include "cpu/self_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/vec_math.h"  // last: exp_f32 (and the no-contraction setting it relies on)

// The v16 helpers below are always inlined into their multiversioned callers, so the ABI note
// GCC gives for a 64-byte vector return in the baseline clone concerns no real call.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace zsq {
namespace cpu {
namespace {

using detail::exp_f32;

constexpr int kLanes = 16;

// Sixteen floats as one GCC vector: a zmm register in the AVX-512 clone, two ymm in the AVX2
// one, four xmm otherwise. The auto-vectoriser split the same loops into mixed ymm / xmm /
// scalar code for the AVX-512 clone (measured 2x slower).
typedef float v16 __attribute__((vector_size(64), aligned(4), may_alias));

ZSQ_INLINE v16 load16(const float* p) { return *reinterpret_cast<const v16*>(p); }
ZSQ_INLINE void store16(float* p, v16 v) { *reinterpret_cast<v16*>(p) = v; }
ZSQ_INLINE v16 splat16(float x) { return v16{} + x; }

ZSQ_INLINE float lanes_sum(v16 v) {
  float total = 0.0f;
  for (int t = 0; t < kLanes; ++t) total += v[t];
  return total;
}

// s[j] = sum_k q[k] * ut[k * l + j]. Four blocks of sixteen positions at a time: four
// independent accumulator chains hide the add latency that one chain per block is bound by.
ZSQ_MULTIVERSION void score_row(const float* q, const float* ut, float* s, int64_t l, int64_t c) {
  int64_t j0 = 0;
  for (; j0 + 4 * kLanes <= l; j0 += 4 * kLanes) {
    v16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t k = 0; k < c; ++k) {
      const float qk = q[k];
      const float* row = ut + k * l + j0;
      a0 += qk * load16(row);
      a1 += qk * load16(row + kLanes);
      a2 += qk * load16(row + 2 * kLanes);
      a3 += qk * load16(row + 3 * kLanes);
    }
    store16(s + j0, a0);
    store16(s + j0 + kLanes, a1);
    store16(s + j0 + 2 * kLanes, a2);
    store16(s + j0 + 3 * kLanes, a3);
  }
  for (; j0 + kLanes <= l; j0 += kLanes) {
    v16 acc = {};
    for (int64_t k = 0; k < c; ++k) acc += q[k] * load16(ut + k * l + j0);
    store16(s + j0, acc);
  }
  for (int64_t j = j0; j < l; ++j) {
    float acc = 0.0f;
    for (int64_t k = 0; k < c; ++k) acc += q[k] * ut[k * l + j];
    s[j] = acc;
  }
}

// out[k] = scale * sum_j w[j] * v[j * c + k] for k < c (v: [l, c]): the weighted sum of rows
// (attention output, query gradient). Sixteen channels per register, four positions at a time
// into four independent accumulators (summed at the end) to hide the add latency.
ZSQ_MULTIVERSION void weighted_rows(const float* w, const float* v, float* out, int64_t l, int64_t c,
                                    float scale) {
  int64_t k0 = 0;
  for (; k0 + kLanes <= c; k0 += kLanes) {
    v16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    int64_t j = 0;
    for (; j + 4 <= l; j += 4) {
      const float* row = v + j * c + k0;
      a0 += w[j] * load16(row);
      a1 += w[j + 1] * load16(row + c);
      a2 += w[j + 2] * load16(row + 2 * c);
      a3 += w[j + 3] * load16(row + 3 * c);
    }
    for (; j < l; ++j) a0 += w[j] * load16(v + j * c + k0);
    store16(out + k0, ((a0 + a1) + (a2 + a3)) * scale);
  }
  for (int64_t k = k0; k < c; ++k) {  // the last c % 16 channels
    float acc = 0.0f;
    for (int64_t j = 0; j < l; ++j) acc += w[j] * v[j * c + k];
    out[k] = acc * scale;
  }
}

ZSQ_MULTIVERSION float row_max(const float* s, int64_t l) {
  v16 m = splat16(-INFINITY);
  int64_t j = 0;
  for (; j + kLanes <= l; j += kLanes) {
    const v16 x = load16(s + j);
    m = m > x ? m : x;
  }
  float best = -INFINITY;
  for (int t = 0; t < kLanes; ++t) best = std::max(best, m[t]);
  for (; j < l; ++j) best = std::max(best, s[j]);
  return best;
}

// x[j] = exp(x[j] - shift)
ZSQ_MULTIVERSION void exp_shifted(float* x, int64_t l, float shift) {
  for (int64_t j = 0; j < l; ++j) x[j] = exp_f32(x[j] - shift);
}

ZSQ_MULTIVERSION float sum(const float* a, int64_t l) {
  v16 acc = {};
  int64_t j = 0;
  for (; j + kLanes <= l; j += kLanes) acc += load16(a + j);
  float tail = 0.0f;
  for (; j < l; ++j) tail += a[j];
  return lanes_sum(acc) + tail;
}

// ds[j] = p[j] * (dp[j] - d): the softmax backward of one row
ZSQ_MULTIVERSION void softmax_grad(const float* p, float* dp, int64_t l, float d) {
  for (int64_t j = 0; j < l; ++j) dp[j] = p[j] * (dp[j] - d);
}

// acc[j * c + k] += x[j] * a[k] + y[j] * b[k] for every position j and channel k: the key
// gradient ds[j] q_i and the value gradient p[j] g_i of one query row, sixteen channels of a and
// b held in registers while the positions stream by
ZSQ_MULTIVERSION void add_outer2(float* acc, const float* a, const float* x, const float* b,
                                 const float* y, int64_t l, int64_t c) {
  int64_t k0 = 0;
  for (; k0 + kLanes <= c; k0 += kLanes) {
    const v16 av = load16(a + k0), bv = load16(b + k0);
    for (int64_t j = 0; j < l; ++j) {
      float* row = acc + j * c + k0;
      store16(row, load16(row) + (x[j] * av + y[j] * bv));
    }
  }
  for (int64_t k = k0; k < c; ++k)  // the last c % 16 channels
    for (int64_t j = 0; j < l; ++j) acc[j * c + k] += x[j] * a[k] + y[j] * b[k];
}

void transpose(const float* src, float* dst, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t k = 0; k < cols; ++k) dst[k * rows + i] = src[i * cols + k];
}

int image_threads(int64_t batch, int num_threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(batch, resolve_threads(num_threads))));
}

void forward_image(const float* u, float* out, float* lse, int64_t l, int64_t c,
                   std::vector<float>& ut, std::vector<float>& p) {
  transpose(u, ut.data(), l, c);
  for (int64_t i = 0; i < l; ++i) {
    score_row(u + i * c, ut.data(), p.data(), l, c);
    const float m = row_max(p.data(), l);
    exp_shifted(p.data(), l, m);
    const float z = sum(p.data(), l);
    lse[i] = m + std::log(z);
    weighted_rows(p.data(), u, out + i * c, l, c, 1.0f / z);
  }
}

void backward_image(const float* u, const float* out, const float* lse, const float* g,
                    float* grad_u, int64_t l, int64_t c, std::vector<float>& ut,
                    std::vector<float>& p, std::vector<float>& ds, std::vector<float>& kv) {
  transpose(u, ut.data(), l, c);
  std::fill(kv.begin(), kv.end(), 0.0f);
  for (int64_t i = 0; i < l; ++i) {
    const float* ui = u + i * c;
    const float* gi = g + i * c;
    score_row(ui, ut.data(), p.data(), l, c);
    exp_shifted(p.data(), l, lse[i]);               // the softmax row, recomputed
    score_row(gi, ut.data(), ds.data(), l, c);      // d p[j] = g_i . v_j
    float d = 0.0f;                                 // sum_j p[j] d p[j] = g_i . out_i
    for (int64_t k = 0; k < c; ++k) d += gi[k] * out[i * c + k];
    softmax_grad(p.data(), ds.data(), l, d);        // d score[j]
    // query gradient: sum_j ds[j] k_j
    weighted_rows(ds.data(), u, grad_u + i * c, l, c, 1.0f);
    // key gradient ds[j] q_i and value gradient p[j] g_i, for every position j
    add_outer2(kv.data(), ui, ds.data(), gi, p.data(), l, c);
  }
  for (int64_t i = 0; i < l * c; ++i) grad_u[i] += kv[i];
}

}  // namespace

void self_attention_forward(const float* u, float* out, float* lse, int64_t batch, int64_t l,
                            int64_t c, int num_threads) {
  const int threads = image_threads(batch, num_threads);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> ut(static_cast<size_t>(l * c)), p(static_cast<size_t>(l));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; ++b)
      forward_image(u + b * l * c, out + b * l * c, lse + b * l, l, c, ut, p);
  }
}

void self_attention_backward(const float* u, const float* out, const float* lse,
                             const float* grad_out, float* grad_u, int64_t batch, int64_t l,
                             int64_t c, int num_threads) {
  const int threads = image_threads(batch, num_threads);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> ut(static_cast<size_t>(l * c)), p(static_cast<size_t>(l)),
        ds(static_cast<size_t>(l)), kv(static_cast<size_t>(l * c));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; ++b)
      backward_image(u + b * l * c, out + b * l * c, lse + b * l, grad_out + b * l * c,
                     grad_u + b * l * c, l, c, ut, p, ds, kv);
  }
}

}  // namespace cpu
}  // namespace zsq
