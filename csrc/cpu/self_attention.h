// Self-attention with queries = keys = values = u and scale 1, per image (torch-free):
//
//     out[b, i, :] = sum_j softmax_j(u[b, i, :] . u[b, j, :]) u[b, j, :]
//
// ZAQ's spatial relation (DANet's position-attention module on channel-normalised features)
// is exactly this with L = H*W positions and C channels. The L x L matrix is never stored: each
// thread works on one image and keeps one score row (L floats) and the image transposed
// ([C, L]) in its own buffers, so a 784 x 784 map costs 3 KB of scores instead of 2.4 MB. The
// backward recomputes each score row from the saved log-sum-exp (FlashAttention's recipe).
#pragma once

#include <cstdint>

namespace zsq {
namespace cpu {

// u, out: [batch, l, c] contiguous float32; lse: [batch, l], log(sum_j exp(score_ij)) per row.
void self_attention_forward(const float* u, float* out, float* lse, int64_t batch, int64_t l,
                            int64_t c, int num_threads);

// grad_u: [batch, l, c], the gradient of the loss through out with respect to u (u enters as
// query, key and value: the three gradients summed). out and lse are the forward's.
void self_attention_backward(const float* u, const float* out, const float* lse,
                             const float* grad_out, float* grad_u, int64_t batch, int64_t l,
                             int64_t c, int num_threads);

}  // namespace cpu
}  // namespace zsq
