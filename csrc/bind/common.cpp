// Argument checks shared by the float-family bindings (see bind/common.h).
#include "bind/common.h"

#include <cmath>
#include <stdexcept>

namespace zsq::bind {

zsq::cpu::ElemType float_elem_type(const char* fn, const char* name, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return zsq::cpu::ElemType::kFloat32;
    case at::kHalf: return zsq::cpu::ElemType::kFloat16;
    case at::kBFloat16: return zsq::cpu::ElemType::kBFloat16;
    default: break;
  }
  TORCH_CHECK(false, fn, ": ", name, " must be float32, float16 or bfloat16, got dtype ",
              t.scalar_type());
  throw std::logic_error("unreachable");
}

void check_cpu_contiguous(const char* fn, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), fn, ": ", name, " must be a CPU tensor, got device ",
              t.device());
  TORCH_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous (call .contiguous() first)");
}

// x: a float CPU tensor, contiguous; returns its storage type
zsq::cpu::ElemType check_float_input(const char* fn, const char* name, const at::Tensor& x) {
  const zsq::cpu::ElemType type = float_elem_type(fn, name, x);
  check_cpu_contiguous(fn, name, x);
  return type;
}

// t must match `like` in dtype and shape (a gradient of it, or a same-shaped operand)
void check_same_as(const char* fn, const char* name, const at::Tensor& t, const char* like_name,
                   const at::Tensor& like) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), fn, ": ", name, " must have the dtype of ",
              like_name, " (", like.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == like.sizes(), fn, ": ", name, " must have the shape of ", like_name,
              " ", like.sizes(), ", got ", t.sizes());
  check_cpu_contiguous(fn, name, t);
}

void check_quant_range(const char* fn, int64_t quant_min, int64_t quant_max) {
  constexpr int64_t lo = -(int64_t{1} << 31), hi = (int64_t{1} << 31) - 1;
  TORCH_CHECK(quant_min >= lo && quant_min <= hi, fn, ": quant_min must fit in int32, got ",
              quant_min);
  TORCH_CHECK(quant_max >= lo && quant_max <= hi, fn, ": quant_max must fit in int32, got ",
              quant_max);
  TORCH_CHECK(quant_min < quant_max, fn, ": quant_min must be < quant_max, got quant_min=",
              quant_min, ", quant_max=", quant_max);
}

// The channel axis in [0, ndim), or -1 for per-tensor (axis=None).
int64_t check_axis(const char* fn, const at::Tensor& x, std::optional<int64_t> axis) {
  if (!axis.has_value()) return -1;
  const int64_t ndim = x.dim();
  TORCH_CHECK(*axis >= -ndim && *axis < ndim, fn, ": axis=", *axis,
              " is out of range for x with ", ndim, " dimensions (expected ", -ndim,
              " <= axis < ", ndim, ", or None for per-tensor)");
  return *axis < 0 ? *axis + ndim : *axis;
}

zsq::cpu::ChannelLayout channel_layout(const at::Tensor& x, int64_t axis) {
  zsq::cpu::ChannelLayout l;
  if (axis < 0) {
    l.inner = x.numel();
    return l;
  }
  for (int64_t d = 0; d < axis; ++d) l.outer *= x.size(d);
  l.channels = x.size(axis);
  for (int64_t d = axis + 1; d < x.dim(); ++d) l.inner *= x.size(d);
  return l;
}

// scale / zero_point: fp32, contiguous, [C] with C = x.shape[axis] (one element per-tensor)
void check_qparam(const char* fn, const char* name, const at::Tensor& t, const at::Tensor& x,
                  int64_t axis) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, fn, ": ", name, " must be float32, got dtype ",
              t.scalar_type());
  check_cpu_contiguous(fn, name, t);
  if (axis < 0) {
    TORCH_CHECK(t.numel() == 1, fn, ": ", name,
                " must have exactly one element for per-tensor quantization (axis=None), got "
                "shape ",
                t.sizes());
  } else {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(axis), fn, ": ", name, " must have shape [",
                x.size(axis), "] (x.shape[axis=", axis, "]), got shape ", t.sizes());
  }
}


QuantArgs check_quant_args(const char* fn, const char* x_name, const at::Tensor& x,
                           const at::Tensor& scale, const at::Tensor& zero_point,
                           int64_t quant_min, int64_t quant_max, std::optional<int64_t> axis) {
  QuantArgs a;
  a.type = check_float_input(fn, x_name, x);
  check_quant_range(fn, quant_min, quant_max);
  a.axis = check_axis(fn, x, axis);
  check_qparam(fn, "scale", scale, x, a.axis);
  check_qparam(fn, "zero_point", zero_point, x, a.axis);
  a.layout = channel_layout(x, a.axis);
  a.params.scale = scale.const_data_ptr<float>();
  a.params.zero_point = zero_point.const_data_ptr<float>();
  a.params.quant_min = quant_min;
  a.params.quant_max = quant_max;
  return a;
}

zsq::cpu::QDropParams check_qdrop(const char* fn, double p, int64_t seed, int64_t offset) {
  TORCH_CHECK(p >= 0.0 && p <= 1.0, fn, ": p must be a probability in [0, 1], got ", p);
  zsq::cpu::QDropParams q;
  q.p = p;
  q.seed = seed;
  q.offset = offset;
  return q;
}

#ifdef ZSQ_WITH_CUDA
void check_launch(const char* fn, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, fn, ": CUDA kernel launch failed: ", cudaGetErrorName(err), ": ",
              cudaGetErrorString(err));
}
#endif

}  // namespace zsq::bind
