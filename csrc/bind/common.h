// What the per-family binding files (csrc/bind/<family>.cpp) share: torch, the argument checks
// of the float kernels, and the bind_<family> functions that binding.cpp's module calls.
// Only binding.cpp and csrc/bind/ include torch; the kernels in csrc/cpu and csrc/cuda do not.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/fake_quant.h"

#ifdef ZSQ_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace zsq::bind {

// ---- argument checks (TORCH_CHECK messages name the function, the argument and what was expected)

zsq::cpu::ElemType float_elem_type(const char* fn, const char* name, const at::Tensor& t);
void check_cpu_contiguous(const char* fn, const char* name, const at::Tensor& t);
// x: a float CPU tensor, contiguous; returns its storage type
zsq::cpu::ElemType check_float_input(const char* fn, const char* name, const at::Tensor& x);
// t must match `like` in dtype and shape (a gradient of it, or a same-shaped operand)
void check_same_as(const char* fn, const char* name, const at::Tensor& t, const char* like_name,
                   const at::Tensor& like);
void check_quant_range(const char* fn, int64_t quant_min, int64_t quant_max);
// The channel axis in [0, ndim), or -1 for per-tensor (axis=None).
int64_t check_axis(const char* fn, const at::Tensor& x, std::optional<int64_t> axis);
zsq::cpu::ChannelLayout channel_layout(const at::Tensor& x, int64_t axis);
// scale / zero_point: fp32, contiguous, [C] with C = x.shape[axis] (one element per-tensor)
void check_qparam(const char* fn, const char* name, const at::Tensor& t, const at::Tensor& x,
                  int64_t axis);

struct QuantArgs {
  zsq::cpu::ElemType type;
  int64_t axis;
  zsq::cpu::ChannelLayout layout;
  zsq::cpu::FakeQuantParams params;
};

QuantArgs check_quant_args(const char* fn, const char* x_name, const at::Tensor& x,
                           const at::Tensor& scale, const at::Tensor& zero_point,
                           int64_t quant_min, int64_t quant_max, std::optional<int64_t> axis);
zsq::cpu::QDropParams check_qdrop(const char* fn, double p, int64_t seed, int64_t offset);

#ifdef ZSQ_WITH_CUDA
void check_launch(const char* fn, cudaError_t err);
#endif

// ---- one per family, each in csrc/bind/<family>.cpp

void bind_info(pybind11::module_& m);
void bind_int4_pack(pybind11::module_& m);
void bind_fake_quant(pybind11::module_& m);
void bind_qdrop_mix(pybind11::module_& m);
void bind_adaround(pybind11::module_& m);
void bind_scale_search(pybind11::module_& m);
void bind_bn_stats(pybind11::module_& m);
void bind_self_attention(pybind11::module_& m);
void bind_int_epilogue(pybind11::module_& m);
void bind_int_gemm(pybind11::module_& m);
void bind_int_conv(pybind11::module_& m);
void bind_int_prepared(pybind11::module_& m);

}  // namespace zsq::bind
