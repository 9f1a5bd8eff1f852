// Fused BatchNorm-statistics loss on the CPU (torch-free: raw pointers and sizes;
// csrc/bind/bn_stats.cpp wraps them). Semantics and the `saved` layout are those of
// zsq_engine/ops/bn_stats/reference.py: a *group* is one statistic, a channel (per-batch
// statistics over N, H, W) or an (image, channel) pair (per-image statistics over H, W);
// groups are numbered layer by layer, `c` (per batch) or `n * C + c` (per image) inside a layer.
// `saved` is float [3, G]: rows mean_g, A_g, B_g with d loss / d a = A_g + B_g * (a - mean_g).
#pragma once

#include <cstdint>

namespace zsq {
namespace cpu {

// One layer's activation: contiguous fp32 [n, c, s] (s = H * W, 1 for [N, C] inputs) and, for
// the backward, its fp32 gradient buffer of the same layout.
struct BnLayer {
  const float* data;
  float* grad;
  int64_t n;
  int64_t c;
  int64_t s;
};

struct BnLossParams {
  bool per_image;
  bool use_std;      // compare sqrt(var + eps_in) with sqrt(running_var + std_eps), else var with running_var
  bool unbiased;     // var = M2 / (count - 1), else M2 / count
  bool eps_in_std;   // eps_in = std_eps, else 0
  bool layer_mean;   // loss = mean over layers, else sum
  int normalize;     // 0: sum / C, 1: sum / N per image (1 per batch), 2: mean over the layer's groups
  double std_eps;
};

// Statistics of every group (double accumulation), the loss and `saved` ([3, total_groups]).
// `running_mean` / `running_var` hold the layers' channels concatenated. Returns the loss.
// `num_threads` <= 0 means the OpenMP default.
double bn_stats_forward(const BnLayer* layers, int64_t num_layers, const float* running_mean,
                        const float* running_var, const BnLossParams& params, float* saved,
                        int64_t total_groups, int num_threads);

// grad = grad_out * (A_g + B_g * (a - mean_g)) into every layer's `grad` buffer.
void bn_stats_backward(const BnLayer* layers, int64_t num_layers, const float* saved,
                       int64_t total_groups, float grad_out, const BnLossParams& params,
                       int num_threads);

}  // namespace cpu
}  // namespace zsq
