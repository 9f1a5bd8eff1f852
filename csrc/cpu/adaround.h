// AdaRound (BRECQ) / Genie-M soft and hard rounding kernels and the rounding regulariser on the
// CPU (torch-free). Formulas of zsq_engine/ops/adaround/reference.py with gamma = -0.1,
// zeta = 1.1:
//   h(alpha) = clamp(sigmoid(alpha) * (zeta - gamma) + gamma, 0, 1)   (hard: alpha >= 0)
//   w = (clamp(w_floor + h + zero_point, quant_min, quant_max) - zero_point) * scale
// Clamps pass gradient on their closed intervals. The zero point need not be an integer here.
#pragma once

#include <cstdint>

#include "cpu/fake_quant.h"

namespace zsq {
namespace cpu {

// w = AdaRound weights, in the storage type of w_floor / alpha (both `type`). The forward
// follows the reference's ops in that type: for fp16 / bf16 every intermediate is rounded to it
// (scale and zero point too), as the reference computes in the weights' dtype.
void adaround_forward(ElemType type, const void* w_floor, const void* alpha, void* w,
                      const ChannelLayout& layout, const FakeQuantParams& params, bool hard,
                      int num_threads);

// Soft-rounding gradients, computed in fp32: dalpha (alpha's type) and the per-channel scale
// gradient dscale[channels] = sum(dy * (clamp(v) - zero_point)) accumulated in double.
void adaround_backward(ElemType type, const void* dy, const void* w_floor, const void* alpha,
                       void* dalpha, float* dscale, const ChannelLayout& layout,
                       const FakeQuantParams& params, int num_threads);

// sum(1 - |2 h(alpha) - 1|^beta) over n elements, in fp64, returned rounded to fp32.
float adaround_reg_forward(ElemType type, const void* alpha, int64_t n, double beta,
                           int num_threads);

// dalpha = grad_out * d reg / d alpha (fp64 math, rounded to alpha's type).
void adaround_reg_backward(ElemType type, double grad_out, const void* alpha, void* dalpha,
                           int64_t n, double beta, int num_threads);

}  // namespace cpu
}  // namespace zsq
