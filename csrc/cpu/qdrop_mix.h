// QDrop input mixing on the CPU (torch-free): out[i] = x_q[i] where uniform(seed, i + offset) < p,
// else x_fp[i], with the counter-based uniform of zsq_engine/ops/reference/rng.py (the same bits
// as the reference and the Triton kernel), so the mask is never materialised.
#pragma once

#include <cstdint>

#include "cpu/fake_quant.h"  // ElemType, QDropParams

namespace zsq {
namespace cpu {

// x_q, x_fp, out: `numel` contiguous elements of `type` (the select copies bit patterns).
void qdrop_mix(ElemType type, const void* x_q, const void* x_fp, void* out, int64_t numel,
               const QDropParams& qdrop, int num_threads);

}  // namespace cpu
}  // namespace zsq
