// Per-channel Lp clipping search for quantization parameters on the CPU (torch-free), the
// BRECQ 'mse' / Genie-M step initialisation of zsq_engine/ops/scale_search/reference.py, with
// every candidate and every channel in one call.
#pragma once

#include <cstdint>

#include "cpu/fake_quant.h"

namespace zsq {
namespace cpu {

// For each channel c of x ([outer, channels, inner], `type`): candidate i (0 <= i <
// num_candidates) clips the channel's range [min, max] by ratio fp32(1 - 0.01 i) and takes
// min/max quantization parameters of it (range widened to contain 0, scale clamped to >= 1e-8;
// symmetric: scale = max(|min|, |max|) / ((quant_max - quant_min) / 2), zero point 0 for a signed
// range else (quant_min + quant_max + 1) // 2). The candidate with the smallest
// mean |x - fake_quant(x)|^p (terms in fp32 as the reference, accumulated in fp64) wins; the
// first one on ties. Channels whose error is never finite (NaN or overflowing values) get
// scale 1, zero point 0, like the reference. Writes scale[channels] and zero_point[channels].
void scale_search(ElemType type, const void* x, const ChannelLayout& layout, int64_t quant_min,
                  int64_t quant_max, int num_candidates, double p, bool symmetric, float* scale,
                  float* zero_point, int num_threads);

}  // namespace cpu
}  // namespace zsq
