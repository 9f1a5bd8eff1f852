// Fused fake-quantization kernels on the CPU (torch-free: raw pointers and sizes;
// csrc/bind/fake_quant.cpp checks the arguments and wraps them). Numerics are those of the
// pure-PyTorch reference primitives in zsq_engine/ops/fake_quant/reference.py (and
// ops/reference/rng.py) bit for bit for the elementwise outputs; per-channel gradient sums are
// accumulated in double per thread and
// rounded once to fp32.
//
// Per element (all in fp32, x widened from its storage type first):
//   inv = 1 / scale, q = round_half_even(x * inv) + zero_point,
//   y = (clamp(q, quant_min, quant_max) - zero_point) * scale, rounded once to x's type.
#pragma once

#include <cstdint>

namespace zsq {
namespace cpu {

// Storage type of x / dy / outputs. fp16 and bf16 are read and written as raw 16-bit patterns;
// every fp32 -> 16-bit conversion rounds to nearest even (as torch does).
enum class ElemType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// A contiguous tensor viewed as [outer, channels, inner]: element (o, c, i) sits at flat index
// (o * channels + c) * inner + i. Per-tensor quantization is channels = 1.
struct ChannelLayout {
  int64_t outer = 1;
  int64_t channels = 1;
  int64_t inner = 1;
  int64_t numel() const { return outer * channels * inner; }
};

struct FakeQuantParams {
  const float* scale = nullptr;       // [channels], finite and > 0
  const float* zero_point = nullptr;  // [channels], integer-valued (already rounded)
  int64_t quant_min = 0;
  int64_t quant_max = 255;
};

// QDrop: element i (flat index) is quantized iff uniform(seed, i + offset) < p, where
// uniform(seed, j) = (mix32(uint32(j) ^ mix32(uint32(seed))) >> 8) * 2^-24 (rng.py), compared
// with p rounded to fp32. Other elements pass through in float.
struct QDropParams {
  double p = 0.5;
  int64_t seed = 0;
  int64_t offset = 0;
};

// y = fake_quant(x). `qdrop` may be null (plain fake-quant). x and y: numel elements of `type`.
// num_threads <= 0 means the OpenMP default; small tensors always run on the calling thread.
void fq_forward(ElemType type, const void* x, void* y, const ChannelLayout& layout,
                const FakeQuantParams& params, const QDropParams* qdrop, int num_threads);

// Straight-through gradient: dx = dy where quant_min <= q <= quant_max (q unclamped), else
// dy * 0. With qdrop, dropped elements get dx = dy.
void fq_backward(ElemType type, const void* dy, const void* x, void* dx,
                 const ChannelLayout& layout, const FakeQuantParams& params,
                 const QDropParams* qdrop, int num_threads);

// LSQ / LSQ+ backward in one pass over dy and x: writes dx and the per-channel sums
// dscale[channels], dzero_point[channels] (fp32). Per element, with gf = fp32(grad_factor):
//   inside:        dscale = ((dy * (y - x)) * inv) * gf,  dzero_point = 0,              dx = dy
//   below / above: dscale = (dy * (qmin|qmax - zp)) * gf, dzero_point = (-dy * s) * gf, dx = dy*0
// The zero point must already be rounded and clamped to [quant_min, quant_max]. With qdrop,
// dropped elements use dy * 0 in the sums and get dx = dy.
void lsq_backward(ElemType type, const void* dy, const void* x, void* dx, float* dscale,
                  float* dzero_point, const ChannelLayout& layout, const FakeQuantParams& params,
                  double grad_factor, const QDropParams* qdrop, int num_threads);

}  // namespace cpu
}  // namespace zsq
