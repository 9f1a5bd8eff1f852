// Python binding of the native extension zsq_engine._C: the ONLY source file that includes torch.
//
// It checks arguments (TORCH_CHECK messages name the argument and what was expected), makes
// inputs contiguous, allocates outputs and calls the torch-free kernels in csrc/cpu/ and, when
// built with ZSQ_WITH_CUDA, the C launchers of csrc/cuda/ on torch's current stream.
#include <torch/extension.h>
#include <torch/version.h>

#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/adaround.h"
#include "cpu/bn_stats.h"
#include "cpu/cpu_features.h"
#include "cpu/fake_quant.h"
#include "cpu/int4_pack.h"
#include "cpu/int_gemm.h"
#include "cpu/int_prepared.h"
#include "cpu/qdrop_mix.h"
#include "cpu/scale_search.h"
#include "cpu/self_attention.h"

#ifdef ZSQ_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "cuda/launchers.h"
#endif

namespace {

#define ZSQ_STRINGIFY_(x) #x
#define ZSQ_STRINGIFY(x) ZSQ_STRINGIFY_(x)

std::string torch_version_built() {
#if defined(TORCH_VERSION_MAJOR) && defined(TORCH_VERSION_MINOR) && defined(TORCH_VERSION_PATCH)
  return ZSQ_STRINGIFY(TORCH_VERSION_MAJOR) "." ZSQ_STRINGIFY(TORCH_VERSION_MINOR) "." ZSQ_STRINGIFY(
      TORCH_VERSION_PATCH);
#else
  return "unknown";
#endif
}

std::string compiler_name() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " ZSQ_STRINGIFY(_MSC_VER);
#else
  return "unknown";
#endif
}

// Shape of the packed tensor: the input's shape with the last dim K replaced by (K + 1) / 2.
std::vector<int64_t> packed_shape(const at::Tensor& x) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = (shape.back() + 1) / 2;
  return shape;
}

void check_pack_input(const char* fn, const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kChar || x.scalar_type() == at::kByte, fn,
              ": x must be int8 (signed int4 values in [-8, 7]) or uint8 (unsigned int4 values "
              "in [0, 15]), got dtype ",
              x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, fn,
              ": x must have at least 1 dimension (values are packed along the last dim K), got "
              "a 0-dim tensor");
}

[[noreturn]] void fail_out_of_range(const char* fn, const at::Tensor& x) {
  // Error path only: one extra pass to report the offending range.
  const bool is_signed = x.scalar_type() == at::kChar;
  const auto as_int = x.to(at::kInt);
  const int64_t lo = as_int.min().item<int64_t>();
  const int64_t hi = as_int.max().item<int64_t>();
  TORCH_CHECK(false, fn, ": x holds values outside the ",
              is_signed ? "signed int4 range [-8, 7] (x is int8)"
                        : "unsigned int4 range [0, 15] (x is uint8)",
              "; found min ", lo, " and max ", hi,
              ". Quantize/clamp to 4 bits before packing.");
  // TORCH_CHECK(false, ...) always throws.
  throw std::logic_error("unreachable");
}

void check_unpack_input(const char* fn, const at::Tensor& packed, int64_t k) {
  TORCH_CHECK(packed.scalar_type() == at::kByte, fn,
              ": packed must be uint8 (two int4 values per byte), got dtype ",
              packed.scalar_type());
  TORCH_CHECK(packed.dim() >= 1, fn,
              ": packed must have at least 1 dimension (last dim (k + 1) // 2), got a 0-dim "
              "tensor");
  const int64_t packed_k = packed.size(-1);
  TORCH_CHECK(k >= 0 && (k + 1) / 2 == packed_k, fn, ": k=", k,
              " does not fit packed with last dim ", packed_k,
              ": expected k with (k + 1) // 2 == ", packed_k, ", i.e. k in {",
              packed_k == 0 ? std::string("0")
                            : std::to_string(2 * packed_k - 1) + ", " + std::to_string(2 * packed_k),
              "}");
}

std::vector<int64_t> unpacked_shape(const at::Tensor& packed, int64_t k) {
  std::vector<int64_t> shape(packed.sizes().begin(), packed.sizes().end());
  shape.back() = k;
  return shape;
}

// ---------------------------------------------------------------------------------------------
// CPU

at::Tensor pack_int4_cpu(const at::Tensor& x) {
  constexpr const char* fn = "pack_int4_cpu";
  check_pack_input(fn, x);
  TORCH_CHECK(x.device().is_cpu(), fn, ": x must be a CPU tensor, got device ", x.device(),
              " (use pack_int4_cuda for CUDA tensors)");
  const at::Tensor xc = x.contiguous();
  const int64_t k = xc.size(-1);
  at::Tensor out = at::empty(packed_shape(xc), xc.options().dtype(at::kByte));
  if (xc.numel() == 0) return out;
  const int64_t rows = xc.numel() / k;
  const int threads = at::get_num_threads();
  bool in_range;
  if (xc.scalar_type() == at::kChar) {
    in_range = zsq::cpu::pack_int4_signed(xc.const_data_ptr<int8_t>(), out.mutable_data_ptr<uint8_t>(),
                                          rows, k, threads);
  } else {
    in_range = zsq::cpu::pack_int4_unsigned(xc.const_data_ptr<uint8_t>(),
                                            out.mutable_data_ptr<uint8_t>(), rows, k, threads);
  }
  if (!in_range) fail_out_of_range(fn, xc);
  return out;
}

at::Tensor unpack_int4_cpu(const at::Tensor& packed, int64_t k, bool is_signed) {
  constexpr const char* fn = "unpack_int4_cpu";
  check_unpack_input(fn, packed, k);
  TORCH_CHECK(packed.device().is_cpu(), fn, ": packed must be a CPU tensor, got device ",
              packed.device(), " (use unpack_int4_cuda for CUDA tensors)");
  const at::Tensor pc = packed.contiguous();
  at::Tensor out =
      at::empty(unpacked_shape(pc, k), pc.options().dtype(is_signed ? at::kChar : at::kByte));
  if (out.numel() == 0) return out;
  const int64_t rows = out.numel() / k;
  const int threads = at::get_num_threads();
  if (is_signed) {
    zsq::cpu::unpack_int4_signed(pc.const_data_ptr<uint8_t>(), out.mutable_data_ptr<int8_t>(), rows,
                                 k, threads);
  } else {
    zsq::cpu::unpack_int4_unsigned(pc.const_data_ptr<uint8_t>(), out.mutable_data_ptr<uint8_t>(),
                                   rows, k, threads);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// CPU fused fake-quant primitives (same arguments as zsq_engine/ops/reference/*)

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

struct QuantArgs {
  zsq::cpu::ElemType type;
  int64_t axis;
  zsq::cpu::ChannelLayout layout;
  zsq::cpu::FakeQuantParams params;
};

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

at::Tensor fq_forward_impl(const char* fn, const at::Tensor& x, const at::Tensor& scale,
                           const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                           std::optional<int64_t> axis, const zsq::cpu::QDropParams* qdrop) {
  const QuantArgs a = check_quant_args(fn, "x", x, scale, zero_point, quant_min, quant_max, axis);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  zsq::cpu::fake_quant_forward(a.type, x.const_data_ptr(), y.mutable_data_ptr(), a.layout,
                               a.params, qdrop, at::get_num_threads());
  return y;
}

at::Tensor fq_backward_impl(const char* fn, const at::Tensor& dy, const at::Tensor& x,
                            const at::Tensor& scale, const at::Tensor& zero_point,
                            int64_t quant_min, int64_t quant_max, std::optional<int64_t> axis,
                            const zsq::cpu::QDropParams* qdrop) {
  const QuantArgs a = check_quant_args(fn, "x", x, scale, zero_point, quant_min, quant_max, axis);
  check_same_as(fn, "dy", dy, "x", x);
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  zsq::cpu::fake_quant_backward(a.type, dy.const_data_ptr(), x.const_data_ptr(),
                                dx.mutable_data_ptr(), a.layout, a.params, qdrop,
                                at::get_num_threads());
  return dx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lsq_backward_impl(
    const char* fn, const at::Tensor& dy, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    std::optional<int64_t> axis, double grad_factor, const zsq::cpu::QDropParams* qdrop) {
  const QuantArgs a = check_quant_args(fn, "x", x, scale, zero_point, quant_min, quant_max, axis);
  check_same_as(fn, "dy", dy, "x", x);
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor dscale = at::empty_like(scale);
  at::Tensor dzero_point = at::empty_like(zero_point);
  zsq::cpu::lsq_backward(a.type, dy.const_data_ptr(), x.const_data_ptr(), dx.mutable_data_ptr(),
                         dscale.mutable_data_ptr<float>(), dzero_point.mutable_data_ptr<float>(),
                         a.layout, a.params, grad_factor, qdrop, at::get_num_threads());
  return {dx, dscale, dzero_point};
}

at::Tensor fq_forward_cpu(const at::Tensor& x, const at::Tensor& scale,
                          const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                          std::optional<int64_t> axis) {
  return fq_forward_impl("fq_forward_cpu", x, scale, zero_point, quant_min, quant_max, axis,
                         nullptr);
}

at::Tensor fq_backward_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& scale,
                           const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                           std::optional<int64_t> axis) {
  return fq_backward_impl("fq_backward_cpu", dy, x, scale, zero_point, quant_min, quant_max,
                          axis, nullptr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lsq_backward_cpu(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    std::optional<int64_t> axis, double grad_factor) {
  return lsq_backward_impl("lsq_backward_cpu", dy, x, scale, zero_point, quant_min, quant_max,
                           axis, grad_factor, nullptr);
}

at::Tensor qdrop_fq_forward_cpu(const at::Tensor& x, const at::Tensor& scale,
                                const at::Tensor& zero_point, int64_t quant_min,
                                int64_t quant_max, std::optional<int64_t> axis, double p,
                                int64_t seed, int64_t offset) {
  constexpr const char* fn = "qdrop_fq_forward_cpu";
  const zsq::cpu::QDropParams q = check_qdrop(fn, p, seed, offset);
  return fq_forward_impl(fn, x, scale, zero_point, quant_min, quant_max, axis, &q);
}

at::Tensor qdrop_fq_backward_cpu(const at::Tensor& dy, const at::Tensor& x,
                                 const at::Tensor& scale, const at::Tensor& zero_point,
                                 int64_t quant_min, int64_t quant_max,
                                 std::optional<int64_t> axis, double p, int64_t seed,
                                 int64_t offset) {
  constexpr const char* fn = "qdrop_fq_backward_cpu";
  const zsq::cpu::QDropParams q = check_qdrop(fn, p, seed, offset);
  return fq_backward_impl(fn, dy, x, scale, zero_point, quant_min, quant_max, axis, &q);
}

// QDrop input mixing: x_q where uniform(seed, index + offset) < p, else x_fp
at::Tensor qdrop_mix_cpu(const at::Tensor& x_q, const at::Tensor& x_fp, double p, int64_t seed,
                         int64_t offset) {
  constexpr const char* fn = "qdrop_mix_cpu";
  const zsq::cpu::ElemType type = check_float_input(fn, "x_q", x_q);
  check_same_as(fn, "x_fp", x_fp, "x_q", x_q);
  const zsq::cpu::QDropParams q = check_qdrop(fn, p, seed, offset);
  at::Tensor out = at::empty_like(x_q, at::MemoryFormat::Contiguous);
  zsq::cpu::qdrop_mix(type, x_q.const_data_ptr(), x_fp.const_data_ptr(), out.mutable_data_ptr(),
                      x_q.numel(), q, at::get_num_threads());
  return out;
}

// ---------------------------------------------------------------------------------------------
// Self-attention with q = k = v = u, scale 1 (ZAQ's spatial relation), float32 [batch, L, C]

void check_attention_input(const char* fn, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, fn, ": ", name, " must be float32, got dtype ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 3, fn, ": ", name, " must be [batch, L, C], got shape ", t.sizes());
  check_cpu_contiguous(fn, name, t);
}

// -> (out [batch, L, C], lse [batch, L])
std::tuple<at::Tensor, at::Tensor> self_attention_forward_cpu(const at::Tensor& u) {
  constexpr const char* fn = "self_attention_forward_cpu";
  check_attention_input(fn, "u", u);
  at::Tensor out = at::empty_like(u, at::MemoryFormat::Contiguous);
  at::Tensor lse = at::empty({u.size(0), u.size(1)}, u.options());
  if (u.numel() > 0) {
    zsq::cpu::self_attention_forward(u.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                                     lse.mutable_data_ptr<float>(), u.size(0), u.size(1),
                                     u.size(2), at::get_num_threads());
  }
  return {out, lse};
}

at::Tensor self_attention_backward_cpu(const at::Tensor& u, const at::Tensor& out,
                                       const at::Tensor& lse, const at::Tensor& grad_out) {
  constexpr const char* fn = "self_attention_backward_cpu";
  check_attention_input(fn, "u", u);
  check_same_as(fn, "out", out, "u", u);
  check_same_as(fn, "grad_out", grad_out, "u", u);
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.dim() == 2 && lse.size(0) == u.size(0) &&
                  lse.size(1) == u.size(1),
              fn, ": lse must be float32 [batch, L] = [", u.size(0), ", ", u.size(1), "], got ",
              lse.scalar_type(), " ", lse.sizes());
  check_cpu_contiguous(fn, "lse", lse);
  at::Tensor grad_u = at::empty_like(u, at::MemoryFormat::Contiguous);
  if (u.numel() > 0) {
    zsq::cpu::self_attention_backward(u.const_data_ptr<float>(), out.const_data_ptr<float>(),
                                      lse.const_data_ptr<float>(), grad_out.const_data_ptr<float>(),
                                      grad_u.mutable_data_ptr<float>(), u.size(0), u.size(1),
                                      u.size(2), at::get_num_threads());
  }
  return grad_u;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> qdrop_lsq_backward_cpu(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    std::optional<int64_t> axis, double grad_factor, double p, int64_t seed, int64_t offset) {
  constexpr const char* fn = "qdrop_lsq_backward_cpu";
  const zsq::cpu::QDropParams q = check_qdrop(fn, p, seed, offset);
  return lsq_backward_impl(fn, dy, x, scale, zero_point, quant_min, quant_max, axis, grad_factor,
                           &q);
}

// AdaRound: w_floor and alpha share one float dtype and shape.
QuantArgs check_adaround_args(const char* fn, const at::Tensor& w_floor, const at::Tensor& alpha,
                              const at::Tensor& scale, const at::Tensor& zero_point,
                              int64_t quant_min, int64_t quant_max,
                              std::optional<int64_t> axis) {
  QuantArgs a = check_quant_args(fn, "w_floor", w_floor, scale, zero_point, quant_min, quant_max,
                                 axis);
  check_same_as(fn, "alpha", alpha, "w_floor", w_floor);
  return a;
}

at::Tensor adaround_forward_cpu(const at::Tensor& w_floor, const at::Tensor& alpha,
                                const at::Tensor& scale, const at::Tensor& zero_point,
                                int64_t quant_min, int64_t quant_max,
                                std::optional<int64_t> axis, bool hard) {
  constexpr const char* fn = "adaround_forward_cpu";
  const QuantArgs a =
      check_adaround_args(fn, w_floor, alpha, scale, zero_point, quant_min, quant_max, axis);
  at::Tensor w = at::empty_like(w_floor, at::MemoryFormat::Contiguous);
  zsq::cpu::adaround_forward(a.type, w_floor.const_data_ptr(), alpha.const_data_ptr(),
                             w.mutable_data_ptr(), a.layout, a.params, hard,
                             at::get_num_threads());
  return w;
}

std::tuple<at::Tensor, at::Tensor> adaround_backward_cpu(
    const at::Tensor& dy, const at::Tensor& w_floor, const at::Tensor& alpha,
    const at::Tensor& scale, const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    std::optional<int64_t> axis) {
  constexpr const char* fn = "adaround_backward_cpu";
  const QuantArgs a =
      check_adaround_args(fn, w_floor, alpha, scale, zero_point, quant_min, quant_max, axis);
  check_same_as(fn, "dy", dy, "w_floor", w_floor);
  at::Tensor dalpha = at::empty_like(alpha, at::MemoryFormat::Contiguous);
  at::Tensor dscale = at::empty_like(scale);
  zsq::cpu::adaround_backward(a.type, dy.const_data_ptr(), w_floor.const_data_ptr(),
                              alpha.const_data_ptr(), dalpha.mutable_data_ptr(),
                              dscale.mutable_data_ptr<float>(), a.layout, a.params,
                              at::get_num_threads());
  return {dalpha, dscale};
}

void check_beta(const char* fn, double beta) {
  TORCH_CHECK(beta > 0.0 && std::isfinite(beta), fn, ": beta must be a positive finite number, got ",
              beta);
}

at::Tensor adaround_reg_forward_cpu(const at::Tensor& alpha, double beta) {
  constexpr const char* fn = "adaround_reg_forward_cpu";
  const zsq::cpu::ElemType type = check_float_input(fn, "alpha", alpha);
  check_beta(fn, beta);
  const float reg = zsq::cpu::adaround_reg_forward(type, alpha.const_data_ptr(), alpha.numel(),
                                                   beta, at::get_num_threads());
  return at::scalar_tensor(reg, alpha.options().dtype(at::kFloat));
}

at::Tensor adaround_reg_backward_cpu(const at::Tensor& grad_out, const at::Tensor& alpha,
                                     double beta) {
  constexpr const char* fn = "adaround_reg_backward_cpu";
  const zsq::cpu::ElemType type = check_float_input(fn, "alpha", alpha);
  check_beta(fn, beta);
  TORCH_CHECK(grad_out.scalar_type() == at::kFloat && grad_out.numel() == 1, fn,
              ": grad_out must be a one-element float32 tensor, got dtype ",
              grad_out.scalar_type(), " and shape ", grad_out.sizes());
  TORCH_CHECK(grad_out.device().is_cpu(), fn, ": grad_out must be a CPU tensor, got device ",
              grad_out.device());
  // a CPU value read: no device synchronisation
  const double g = static_cast<double>(*grad_out.const_data_ptr<float>());
  at::Tensor dalpha = at::empty_like(alpha, at::MemoryFormat::Contiguous);
  zsq::cpu::adaround_reg_backward(type, g, alpha.const_data_ptr(), dalpha.mutable_data_ptr(),
                                  alpha.numel(), beta, at::get_num_threads());
  return dalpha;
}

std::tuple<at::Tensor, at::Tensor> scale_search_cpu(const at::Tensor& x, int64_t quant_min,
                                                    int64_t quant_max,
                                                    std::optional<int64_t> axis,
                                                    int64_t num_candidates, double p,
                                                    bool symmetric) {
  constexpr const char* fn = "scale_search_cpu";
  const zsq::cpu::ElemType type = check_float_input(fn, "x", x);
  check_quant_range(fn, quant_min, quant_max);
  const int64_t ax = check_axis(fn, x, axis);
  TORCH_CHECK(num_candidates >= 1 && num_candidates <= 100, fn,
              ": num_candidates must be in [1, 100], got ", num_candidates);
  TORCH_CHECK(p > 0.0 && std::isfinite(p), fn, ": p must be a positive finite number, got ", p);
  TORCH_CHECK(x.numel() > 0, fn, ": x must not be empty");
  const zsq::cpu::ChannelLayout layout = channel_layout(x, ax);
  const int64_t channels = ax < 0 ? 1 : x.size(ax);
  const auto opts = x.options().dtype(at::kFloat);
  at::Tensor scale = at::empty({channels}, opts);
  at::Tensor zero_point = at::empty({channels}, opts);
  zsq::cpu::scale_search(type, x.const_data_ptr(), layout, quant_min, quant_max,
                         static_cast<int>(num_candidates), p, symmetric,
                         scale.mutable_data_ptr<float>(), zero_point.mutable_data_ptr<float>(),
                         at::get_num_threads());
  return {scale, zero_point};
}

// ---------------------------------------------------------------------------------------------
// CUDA

#ifdef ZSQ_WITH_CUDA

void check_launch(const char* fn, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, fn, ": CUDA kernel launch failed: ", cudaGetErrorName(err), ": ",
              cudaGetErrorString(err));
}

// Synchronises once (reads the range flag back) so that bad input raises like on the CPU.
// Packing is an offline weight-conversion step, never on a training path.
at::Tensor pack_int4_cuda(const at::Tensor& x) {
  constexpr const char* fn = "pack_int4_cuda";
  check_pack_input(fn, x);
  TORCH_CHECK(x.is_cuda(), fn, ": x must be a CUDA tensor, got device ", x.device(),
              " (use pack_int4_cpu for CPU tensors)");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor xc = x.contiguous();
  const int64_t k = xc.size(-1);
  at::Tensor out = at::empty(packed_shape(xc), xc.options().dtype(at::kByte));
  if (xc.numel() == 0) return out;
  const int64_t rows = xc.numel() / k;
  at::Tensor flag = at::zeros({1}, xc.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  check_launch(fn, zsq_pack_int4_cuda_launch(static_cast<const uint8_t*>(xc.const_data_ptr()),
                                             out.mutable_data_ptr<uint8_t>(), rows, k,
                                             xc.scalar_type() == at::kChar ? 1 : 0,
                                             flag.mutable_data_ptr<int>(), stream));
  if (flag.item<int>() != 0) fail_out_of_range(fn, xc);
  return out;
}

at::Tensor unpack_int4_cuda(const at::Tensor& packed, int64_t k, bool is_signed) {
  constexpr const char* fn = "unpack_int4_cuda";
  check_unpack_input(fn, packed, k);
  TORCH_CHECK(packed.is_cuda(), fn, ": packed must be a CUDA tensor, got device ",
              packed.device(), " (use unpack_int4_cpu for CPU tensors)");
  const c10::cuda::CUDAGuard device_guard(packed.device());
  const at::Tensor pc = packed.contiguous();
  at::Tensor out =
      at::empty(unpacked_shape(pc, k), pc.options().dtype(is_signed ? at::kChar : at::kByte));
  if (out.numel() == 0) return out;
  const int64_t rows = out.numel() / k;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(packed.device().index()).stream();
  check_launch(fn, zsq_unpack_int4_cuda_launch(pc.const_data_ptr<uint8_t>(),
                                               static_cast<uint8_t*>(out.mutable_data_ptr()), rows,
                                               k, is_signed ? 1 : 0, stream));
  return out;
}

#endif  // ZSQ_WITH_CUDA

// ---------------------------------------------------------------------------------------------
// BatchNorm-statistics loss (CPU)

struct BnCpuInputs {
  std::vector<at::Tensor> data;  // fp32 contiguous copies/views kept alive for the kernel
  std::vector<zsq::cpu::BnLayer> layers;
  int64_t total_groups = 0;
};

BnCpuInputs bn_prepare(const char* fn, const std::vector<at::Tensor>& activations, bool per_image) {
  TORCH_CHECK(!activations.empty(), fn, ": activations must be a non-empty list of tensors");
  BnCpuInputs in;
  for (size_t i = 0; i < activations.size(); ++i) {
    const at::Tensor& a = activations[i];
    TORCH_CHECK(a.device().is_cpu(), fn, ": activations[", i, "] must be a CPU tensor, got device ",
                a.device());
    TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kHalf ||
                    a.scalar_type() == at::kBFloat16,
                fn, ": activations[", i, "] must be float32, float16 or bfloat16, got ", a.scalar_type());
    TORCH_CHECK(a.dim() == 2 || a.dim() == 4, fn, ": activations[", i,
                "] must be [N, C, H, W] or [N, C], got ", a.dim(), " dims");
    TORCH_CHECK(a.numel() > 0, fn, ": activations[", i, "] must not be empty");
    // fp16/bf16 are widened once here; the kernel reads fp32 rows.
    in.data.push_back(a.to(at::kFloat).contiguous());
    const int64_t s = a.dim() == 4 ? a.size(2) * a.size(3) : 1;
    in.layers.push_back({in.data.back().const_data_ptr<float>(), nullptr, a.size(0), a.size(1), s});
    in.total_groups += per_image ? a.size(0) * a.size(1) : a.size(1);
  }
  return in;
}

zsq::cpu::BnLossParams bn_params(bool per_image, bool use_std, bool unbiased, double std_eps,
                                 bool eps_in_std, int64_t normalize, bool layer_mean) {
  TORCH_CHECK(normalize >= 0 && normalize <= 2,
              "bn_stats: normalize must be 0 (channels), 1 (batch) or 2 (mean), got ", normalize);
  return {per_image, use_std, unbiased, eps_in_std, layer_mean, static_cast<int>(normalize), std_eps};
}

at::Tensor bn_concat_params(const char* fn, const char* name, const std::vector<at::Tensor>& params,
                            const BnCpuInputs& in) {
  TORCH_CHECK(params.size() == in.layers.size(), fn, ": ", name, " must have one tensor per layer (",
              in.layers.size(), "), got ", params.size());
  std::vector<at::Tensor> flat;
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(params[i].device().is_cpu(), fn, ": ", name, "[", i, "] must be a CPU tensor");
    TORCH_CHECK(params[i].numel() == in.layers[i].c, fn, ": ", name, "[", i, "] must have ",
                in.layers[i].c, " elements (channels of activations[", i, "]), got ", params[i].numel());
    flat.push_back(params[i].reshape({-1}).to(at::kFloat));
  }
  return at::cat(flat).contiguous();
}

std::tuple<at::Tensor, at::Tensor> bn_stats_forward_cpu(
    const std::vector<at::Tensor>& activations, const std::vector<at::Tensor>& running_means,
    const std::vector<at::Tensor>& running_vars, bool per_image, bool use_std, bool unbiased,
    double std_eps, bool eps_in_std, int64_t normalize, bool layer_mean) {
  constexpr const char* fn = "bn_stats_forward_cpu";
  const auto params = bn_params(per_image, use_std, unbiased, std_eps, eps_in_std, normalize, layer_mean);
  BnCpuInputs in = bn_prepare(fn, activations, per_image);
  const at::Tensor rmean = bn_concat_params(fn, "running_means", running_means, in);
  const at::Tensor rvar = bn_concat_params(fn, "running_vars", running_vars, in);
  at::Tensor saved = at::empty({3, in.total_groups}, rmean.options());
  const double loss = zsq::cpu::bn_stats_forward(
      in.layers.data(), static_cast<int64_t>(in.layers.size()), rmean.const_data_ptr<float>(),
      rvar.const_data_ptr<float>(), params, saved.mutable_data_ptr<float>(), in.total_groups,
      at::get_num_threads());
  return {at::scalar_tensor(loss, rmean.options()), saved};
}

std::vector<at::Tensor> bn_stats_backward_cpu(const at::Tensor& grad_out,
                                              const std::vector<at::Tensor>& activations,
                                              const at::Tensor& saved, bool per_image, bool use_std,
                                              bool unbiased, double std_eps, bool eps_in_std,
                                              int64_t normalize, bool layer_mean) {
  constexpr const char* fn = "bn_stats_backward_cpu";
  const auto params = bn_params(per_image, use_std, unbiased, std_eps, eps_in_std, normalize, layer_mean);
  TORCH_CHECK(grad_out.numel() == 1, fn, ": grad_out must have one element, got ", grad_out.numel());
  BnCpuInputs in = bn_prepare(fn, activations, per_image);
  TORCH_CHECK(saved.device().is_cpu() && saved.scalar_type() == at::kFloat && saved.dim() == 2 &&
                  saved.size(0) == 3 && saved.size(1) == in.total_groups,
              fn, ": saved must be a float32 CPU tensor [3, ", in.total_groups, "], got ",
              saved.scalar_type(), " ", saved.sizes());
  const at::Tensor saved_c = saved.contiguous();
  std::vector<at::Tensor> grads;
  for (auto& layer : in.layers) {
    grads.push_back(at::empty({layer.n, layer.c, layer.s}, saved_c.options()));
    layer.grad = grads.back().mutable_data_ptr<float>();
  }
  zsq::cpu::bn_stats_backward(in.layers.data(), static_cast<int64_t>(in.layers.size()),
                              saved_c.const_data_ptr<float>(), in.total_groups,
                              grad_out.to(at::kFloat).item<float>(), params, at::get_num_threads());
  for (size_t i = 0; i < grads.size(); ++i) {
    grads[i] = grads[i].reshape(activations[i].sizes()).to(activations[i].scalar_type());
  }
  return grads;
}

// ---------------------------------------------------------------------------------------------
// CPU integer GEMM / conv (csrc/cpu/int_gemm.h): the qgemm / qconv2d_nhwc primitives

zsq::cpu::IntIsa check_int_isa(const char* fn, int64_t isa) {
  TORCH_CHECK(isa >= 0 && isa <= 3, fn,
              ": isa must be 0 (auto), 1 (scalar), 2 (avx2) or 3 (avx512_vnni), got ", isa);
  const auto v = static_cast<zsq::cpu::IntIsa>(isa);
  TORCH_CHECK(zsq::cpu::int_isa_supported(v), fn, ": isa=", isa,
              " (1 scalar, 2 avx2, 3 avx512_vnni) is not supported by this CPU; see "
              "cpu_capabilities()");
  return v;
}

at::ScalarType int_out_dtype(zsq::cpu::OutKind k) {
  switch (k) {
    case zsq::cpu::OutKind::kInt32: return at::kInt;
    case zsq::cpu::OutKind::kFloat32: return at::kFloat;
    case zsq::cpu::OutKind::kFloat16: return at::kHalf;
    case zsq::cpu::OutKind::kBFloat16: return at::kBFloat16;
    case zsq::cpu::OutKind::kInt8: return at::kChar;
    case zsq::cpu::OutKind::kUint8: return at::kByte;
  }
  return at::kInt;
}

// A tensor on `device` of `dtype` with 1 or `per` elements (or exactly `per` when !allow_one),
// as a contiguous 1-D tensor kept alive by the caller.
at::Tensor check_epilogue_vector(const char* fn, const char* name, const at::Tensor& t,
                                 at::ScalarType dtype, int64_t per, bool allow_one,
                                 const at::Device& device) {
  TORCH_CHECK(t.device() == device, fn, ": epilogue ", name, " must be on ", device,
              " (the operands' device), got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, fn, ": epilogue ", name, " must be ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.numel() == per || (allow_one && t.numel() == 1), fn, ": epilogue ", name,
              " must have ", per, allow_one ? " elements or 1" : " elements", ", got shape ",
              t.sizes());
  return t.reshape({-1}).contiguous();
}

struct IntEpilogueArgs {
  zsq::cpu::IntEpilogue ep;
  std::vector<at::Tensor> keep;  // contiguous copies the raw pointers point into
};

// The epilogue of an [m, n] output (zsq_engine/ops/epilogue.py); out_kind: 0 int32, 1 fp32,
// 2 fp16, 3 bf16, 4 int8, 5 uint8 (requantised); activation: 0 none, 1 relu, 2 relu6. Every
// tensor must be on `device` (the operands' device); the pointers are into r.keep.
IntEpilogueArgs make_int_epilogue(const char* fn, const at::Device& device, int64_t m, int64_t n,
                                  int64_t out_kind,
                                  int64_t act_zero_point,
                                  const std::optional<at::Tensor>& weight_zero_point,
                                  const std::optional<at::Tensor>& weight_scale,
                                  const std::optional<at::Tensor>& act_scale,
                                  const std::optional<at::Tensor>& bias,
                                  const std::optional<at::Tensor>& residual,
                                  double residual_scale, int64_t residual_zero_point,
                                  int64_t activation, double out_scale, int64_t out_zero_point,
                                  int64_t quant_min, int64_t quant_max) {
  using zsq::cpu::OutKind;
  IntEpilogueArgs r;
  auto& ep = r.ep;
  TORCH_CHECK(out_kind >= 0 && out_kind <= 5, fn,
              ": out_kind must be 0 (int32), 1 (fp32), 2 (fp16), 3 (bf16), 4 (int8) or 5 (uint8), got ",
              out_kind);
  constexpr int64_t i32_lo = -(int64_t{1} << 31), i32_hi = (int64_t{1} << 31) - 1;
  TORCH_CHECK(act_zero_point >= i32_lo && act_zero_point <= i32_hi, fn,
              ": act_zero_point must fit int32, got ", act_zero_point);
  ep.out = static_cast<OutKind>(out_kind);
  ep.act_zero_point = static_cast<int32_t>(act_zero_point);
  if (weight_zero_point.has_value()) {
    r.keep.push_back(check_epilogue_vector(fn, "weight_zero_point", *weight_zero_point, at::kInt, n, true, device));
    ep.weight_zero_point = r.keep.back().const_data_ptr<int32_t>();
    ep.wzp_per_channel = r.keep.back().numel() == n && n != 1;
  }
  if (ep.out == OutKind::kInt32) {
    TORCH_CHECK(!weight_scale.has_value() && !act_scale.has_value() && !bias.has_value() &&
                    !residual.has_value() && activation == 0,
                fn, ": an int32 output keeps the accumulator: only zero points are allowed, got "
                "scales, bias, residual or an activation");
    return r;
  }
  TORCH_CHECK(weight_scale.has_value() && act_scale.has_value(), fn, ": out_kind=", out_kind,
              " needs weight_scale and act_scale");
  r.keep.push_back(check_epilogue_vector(fn, "weight_scale", *weight_scale, at::kFloat, n, true, device));
  ep.weight_scale = r.keep.back().const_data_ptr<float>();
  ep.wscale_per_channel = r.keep.back().numel() == n && n != 1;
  r.keep.push_back(check_epilogue_vector(fn, "act_scale", *act_scale, at::kFloat, m, true, device));
  ep.act_scale = r.keep.back().const_data_ptr<float>();
  ep.ascale_per_row = r.keep.back().numel() == m && m != 1;
  if (bias.has_value()) {
    r.keep.push_back(check_epilogue_vector(fn, "bias", *bias, at::kFloat, n, false, device));
    ep.bias = r.keep.back().const_data_ptr<float>();
  }
  if (residual.has_value()) {
    const at::Tensor& res = *residual;
    TORCH_CHECK(res.device() == device, fn, ": epilogue residual must be on ", device,
                " (the operands' device), got ", res.device());
    TORCH_CHECK(res.numel() == m * n, fn, ": epilogue residual must have ", m, " x ", n,
                " elements (the output's shape), got shape ", res.sizes());
    switch (res.scalar_type()) {
      case at::kFloat: ep.residual_kind = OutKind::kFloat32; break;
      case at::kHalf: ep.residual_kind = OutKind::kFloat16; break;
      case at::kBFloat16: ep.residual_kind = OutKind::kBFloat16; break;
      case at::kChar: ep.residual_kind = OutKind::kInt8; break;
      case at::kByte: ep.residual_kind = OutKind::kUint8; break;
      default:
        TORCH_CHECK(false, fn, ": epilogue residual must be float32/float16/bfloat16/int8/uint8, got ",
                    res.scalar_type());
    }
    r.keep.push_back(res.contiguous());
    ep.residual = r.keep.back().const_data_ptr();
    ep.residual_scale = static_cast<float>(residual_scale);
    ep.residual_zero_point = static_cast<int32_t>(residual_zero_point);
  }
  TORCH_CHECK(activation >= 0 && activation <= 2, fn,
              ": activation must be 0 (none), 1 (relu) or 2 (relu6), got ", activation);
  ep.activation = static_cast<int>(activation);
  if (ep.out == OutKind::kInt8 || ep.out == OutKind::kUint8) {
    const int64_t lo = ep.out == OutKind::kInt8 ? -128 : 0, hi = ep.out == OutKind::kInt8 ? 127 : 255;
    TORCH_CHECK(quant_min >= lo && quant_max <= hi && quant_min < quant_max, fn, ": quant range [",
                quant_min, ", ", quant_max, "] must be increasing and inside [", lo, ", ", hi, "]");
    TORCH_CHECK(out_scale > 0.0 && std::isfinite(out_scale), fn,
                ": out_scale must be positive and finite, got ", out_scale);
    ep.out_scale = static_cast<float>(out_scale);
    ep.out_zero_point = static_cast<int32_t>(out_zero_point);
    ep.quant_min = static_cast<int32_t>(quant_min);
    ep.quant_max = static_cast<int32_t>(quant_max);
  }
  return r;
}

// panels as returned by int_pack_weight_cpu for `groups` groups of n_g channels and length k
void check_panels(const char* fn, const at::Tensor& panels, const at::Tensor& colsum,
                  int64_t groups, int64_t n_g, int64_t k) {
  TORCH_CHECK(panels.device().is_cpu() && panels.scalar_type() == at::kChar && panels.is_contiguous(),
              fn, ": panels must be the contiguous int8 CPU tensor returned by int_pack_weight_cpu");
  const std::vector<int64_t> want = {groups, zsq::cpu::panel_blocks(n_g), zsq::cpu::k_groups(k),
                                     zsq::cpu::kPanelCols, zsq::cpu::kPanelK};
  TORCH_CHECK(panels.sizes() == at::IntArrayRef(want), fn, ": panels has shape ", panels.sizes(),
              " but ", groups, " group(s) of ", n_g, " channels with k=", k, " need ",
              at::IntArrayRef(want), " (pack the weight with int_pack_weight_cpu)");
  TORCH_CHECK(colsum.device().is_cpu() && colsum.scalar_type() == at::kInt && colsum.is_contiguous() &&
                  colsum.numel() == groups * n_g,
              fn, ": colsum must be the contiguous int32 CPU tensor [", groups * n_g,
              "] returned by int_pack_weight_cpu");
}

std::tuple<at::Tensor, at::Tensor> int_pack_weight_cpu(const at::Tensor& w, int64_t groups,
                                                       bool w_int4, int64_t k) {
  constexpr const char* fn = "int_pack_weight_cpu";
  TORCH_CHECK(w.device().is_cpu(), fn, ": w must be a CPU tensor, got ", w.device());
  TORCH_CHECK(w.dim() == 2, fn, ": w must be 2-D [N, K] (or packed [N, (k + 1) // 2]), got shape ",
              w.sizes());
  TORCH_CHECK(groups >= 1 && w.size(0) % groups == 0, fn, ": groups=", groups,
              " must be >= 1 and divide N=", w.size(0));
  if (w_int4) {
    TORCH_CHECK(w.scalar_type() == at::kByte, fn,
                ": a packed int4 w must be uint8 (two values per byte), got ", w.scalar_type());
    TORCH_CHECK(k >= 1 && (k + 1) / 2 == w.size(1), fn, ": w has ", w.size(1),
                " packed columns, which does not hold k=", k, " int4 values");
  } else {
    TORCH_CHECK(w.scalar_type() == at::kChar, fn, ": w must be int8 [N, K], got ", w.scalar_type(),
                w.scalar_type() == at::kByte ? " (a packed int4 weight needs w_int4=True)" : "");
    TORCH_CHECK(k == w.size(1) && k >= 1, fn, ": k=", k, " must equal w.shape[1]=", w.size(1));
  }
  const at::Tensor wc = w.stride(1) == 1 ? w : w.contiguous();
  const int64_t n_g = w.size(0) / groups;
  at::Tensor panels = at::empty({groups, zsq::cpu::panel_blocks(n_g), zsq::cpu::k_groups(k),
                                 zsq::cpu::kPanelCols, zsq::cpu::kPanelK},
                                w.options().dtype(at::kChar));
  at::Tensor colsum = at::empty({w.size(0)}, w.options().dtype(at::kInt));
  zsq::cpu::pack_weight_panels(static_cast<const uint8_t*>(wc.const_data_ptr()), wc.stride(0), w_int4,
                               groups, n_g, k, panels.mutable_data_ptr<int8_t>(),
                               colsum.mutable_data_ptr<int32_t>(), at::get_num_threads());
  return {panels, colsum};
}

at::Tensor int_gemm_cpu(const at::Tensor& a, int64_t act_kind, int64_t k, const at::Tensor& panels,
                        const at::Tensor& colsum, int64_t n, int64_t out_kind, int64_t act_zero_point,
                        const std::optional<at::Tensor>& weight_zero_point,
                        const std::optional<at::Tensor>& weight_scale,
                        const std::optional<at::Tensor>& act_scale, const std::optional<at::Tensor>& bias,
                        const std::optional<at::Tensor>& residual, double residual_scale,
                        int64_t residual_zero_point, int64_t activation, double out_scale,
                        int64_t out_zero_point, int64_t quant_min, int64_t quant_max, int64_t isa) {
  constexpr const char* fn = "int_gemm_cpu";
  TORCH_CHECK(act_kind >= 0 && act_kind <= 3, fn,
              ": act_kind must be 0 (int8), 1 (uint8), 2 (packed int4) or 3 (packed uint4), got ", act_kind);
  TORCH_CHECK(a.device().is_cpu() && a.dim() == 2, fn, ": a must be a 2-D CPU tensor, got ",
              a.device(), " with shape ", a.sizes());
  const at::ScalarType want = act_kind == 0 ? at::kChar : at::kByte;
  TORCH_CHECK(a.scalar_type() == want, fn, ": a must be ", want, " for act_kind=", act_kind, ", got ",
              a.scalar_type());
  TORCH_CHECK(k >= 1, fn, ": k must be >= 1, got ", k);
  const int64_t cols = act_kind >= 2 ? (k + 1) / 2 : k;
  TORCH_CHECK(a.size(1) == cols, fn, ": a has ", a.size(1), " columns, expected ", cols, " for k=", k,
              act_kind >= 2 ? " (packed int4)" : "");
  TORCH_CHECK(n >= 1, fn, ": n must be >= 1, got ", n);
  check_panels(fn, panels, colsum, 1, n, k);
  const auto isa_v = check_int_isa(fn, isa);
  const at::Tensor ac = (a.stride(1) == 1 && a.stride(0) >= cols) ? a : a.contiguous();
  const int64_t m = a.size(0);
  IntEpilogueArgs e = make_int_epilogue(fn, at::Device(at::kCPU), m, n, out_kind, act_zero_point,
                                        weight_zero_point,
                                        weight_scale, act_scale, bias, residual, residual_scale,
                                        residual_zero_point, activation, out_scale, out_zero_point,
                                        quant_min, quant_max);
  at::Tensor out = at::empty({m, n}, a.options().dtype(int_out_dtype(e.ep.out)));
  if (m == 0) return out;
  zsq::cpu::int_gemm(static_cast<const uint8_t*>(ac.const_data_ptr()), ac.stride(0),
                     static_cast<zsq::cpu::ActKind>(act_kind), m, n, k, panels.const_data_ptr<int8_t>(),
                     colsum.const_data_ptr<int32_t>(), e.ep, out.mutable_data_ptr(), isa_v,
                     at::get_num_threads());
  return out;
}

// x on a device of type `device_type` (CPU or CUDA)
zsq::cpu::ConvShape check_conv_shape(const char* fn, const at::Tensor& x, int64_t o, int64_t kh,
                                     int64_t kw, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                                     int64_t pad_w, int64_t dil_h, int64_t dil_w, int64_t groups,
                                     int64_t pad_value, c10::DeviceType device_type = at::kCPU) {
  TORCH_CHECK(x.device().type() == device_type && x.dim() == 4, fn, ": x must be a 4-D NHWC ",
              device_type == at::kCPU ? "CPU" : "CUDA", " tensor, got ", x.device(), " with shape ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kChar || x.scalar_type() == at::kByte, fn,
              ": x must be int8 or uint8, got ", x.scalar_type());
  TORCH_CHECK(kh >= 1 && kw >= 1 && stride_h >= 1 && stride_w >= 1 && dil_h >= 1 && dil_w >= 1 &&
                  pad_h >= 0 && pad_w >= 0,
              fn, ": kernel size, stride and dilation must be >= 1 and padding >= 0");
  zsq::cpu::ConvShape s{x.size(0), x.size(1), x.size(2), x.size(3), o, kh, kw, stride_h, stride_w,
                        pad_h, pad_w, dil_h, dil_w, groups, 0, 0};
  TORCH_CHECK(groups >= 1 && s.c % groups == 0 && o % groups == 0, fn, ": groups=", groups,
              " must divide C=", s.c, " and O=", o);
  const bool is_signed = x.scalar_type() == at::kChar;
  TORCH_CHECK(is_signed ? (pad_value >= -128 && pad_value <= 127) : (pad_value >= 0 && pad_value <= 255),
              fn, ": pad_value=", pad_value, " does not fit ", x.scalar_type(), " x");
  s.oh = (s.h + 2 * pad_h - dil_h * (kh - 1) - 1) / stride_h + 1;
  s.ow = (s.w + 2 * pad_w - dil_w * (kw - 1) - 1) / stride_w + 1;
  TORCH_CHECK(s.h + 2 * pad_h - dil_h * (kh - 1) - 1 >= 0 && s.w + 2 * pad_w - dil_w * (kw - 1) - 1 >= 0,
              fn, ": the output would be empty for input ", s.h, "x", s.w, " and kernel ", kh, "x", kw);
  return s;
}

at::Tensor int_conv2d_nhwc_cpu(const at::Tensor& x, const at::Tensor& panels, const at::Tensor& colsum,
                               int64_t o, int64_t kh, int64_t kw, int64_t stride_h, int64_t stride_w,
                               int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w,
                               int64_t groups, int64_t pad_value, int64_t out_kind,
                               int64_t act_zero_point,
                               const std::optional<at::Tensor>& weight_zero_point,
                               const std::optional<at::Tensor>& weight_scale,
                               const std::optional<at::Tensor>& act_scale,
                               const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& residual, double residual_scale,
                               int64_t residual_zero_point, int64_t activation, double out_scale,
                               int64_t out_zero_point, int64_t quant_min, int64_t quant_max,
                               int64_t isa) {
  constexpr const char* fn = "int_conv2d_nhwc_cpu";
  const zsq::cpu::ConvShape s = check_conv_shape(fn, x, o, kh, kw, stride_h, stride_w, pad_h, pad_w,
                                                 dil_h, dil_w, groups, pad_value);
  check_panels(fn, panels, colsum, groups, o / groups, kh * kw * (s.c / groups));
  const auto isa_v = check_int_isa(fn, isa);
  const int64_t m = s.batch * s.oh * s.ow;
  IntEpilogueArgs e = make_int_epilogue(fn, at::Device(at::kCPU), m, o, out_kind, act_zero_point,
                                        weight_zero_point,
                                        weight_scale, act_scale, bias, residual, residual_scale,
                                        residual_zero_point, activation, out_scale, out_zero_point,
                                        quant_min, quant_max);
  at::Tensor out = at::empty({s.batch, s.oh, s.ow, o}, x.options().dtype(int_out_dtype(e.ep.out)));
  if (m == 0 || s.c == 0) {
    TORCH_CHECK(m == 0, fn, ": x has no channels");
    return out;
  }
  const at::Tensor xc = x.contiguous();
  zsq::cpu::int_conv2d_nhwc(static_cast<const uint8_t*>(xc.const_data_ptr()),
                            x.scalar_type() == at::kChar ? zsq::cpu::ActKind::kInt8 : zsq::cpu::ActKind::kUint8,
                            s, static_cast<int32_t>(pad_value), panels.const_data_ptr<int8_t>(),
                            colsum.const_data_ptr<int32_t>(), e.ep, out.mutable_data_ptr(), isa_v,
                            at::get_num_threads());
  return out;
}

at::Tensor int_depthwise_conv2d_nhwc_cpu(
    const at::Tensor& x, const at::Tensor& w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    int64_t pad_w, int64_t dil_h, int64_t dil_w, int64_t pad_value, int64_t out_kind,
    int64_t act_zero_point, const std::optional<at::Tensor>& weight_zero_point,
    const std::optional<at::Tensor>& weight_scale, const std::optional<at::Tensor>& act_scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
    double residual_scale, int64_t residual_zero_point, int64_t activation, double out_scale,
    int64_t out_zero_point, int64_t quant_min, int64_t quant_max) {
  constexpr const char* fn = "int_depthwise_conv2d_nhwc_cpu";
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kChar && w.dim() == 4 && w.size(3) == 1,
              fn, ": w must be an int8 CPU tensor [C, kh, kw, 1], got ", w.scalar_type(), " ", w.sizes());
  TORCH_CHECK(x.dim() == 4 && w.size(0) == x.size(3), fn, ": w has ", w.size(0),
              " channels but x (NHWC) has ", x.dim() == 4 ? x.size(3) : -1);
  const zsq::cpu::ConvShape s = check_conv_shape(fn, x, w.size(0), w.size(1), w.size(2), stride_h,
                                                 stride_w, pad_h, pad_w, dil_h, dil_w, x.size(3),
                                                 pad_value);
  const int64_t m = s.batch * s.oh * s.ow;
  IntEpilogueArgs e = make_int_epilogue(fn, at::Device(at::kCPU), m, s.c, out_kind, act_zero_point,
                                        weight_zero_point,
                                        weight_scale, act_scale, bias, residual, residual_scale,
                                        residual_zero_point, activation, out_scale, out_zero_point,
                                        quant_min, quant_max);
  at::Tensor out = at::empty({s.batch, s.oh, s.ow, s.c}, x.options().dtype(int_out_dtype(e.ep.out)));
  if (m == 0 || s.c == 0) return out;
  const at::Tensor xc = x.contiguous();
  const at::Tensor wc = w.contiguous();
  zsq::cpu::int_depthwise_conv2d_nhwc(
      static_cast<const uint8_t*>(xc.const_data_ptr()),
      x.scalar_type() == at::kChar ? zsq::cpu::ActKind::kInt8 : zsq::cpu::ActKind::kUint8, s,
      static_cast<int32_t>(pad_value), wc.const_data_ptr<int8_t>(), e.ep, out.mutable_data_ptr(),
      at::get_num_threads());
  return out;
}

std::vector<std::string> int_isas_cpu() {
  std::vector<std::string> names = {"scalar"};
  if (zsq::cpu::int_isa_supported(zsq::cpu::IntIsa::kAvx2)) names.push_back("avx2");
  if (zsq::cpu::int_isa_supported(zsq::cpu::IntIsa::kAvx512Vnni)) names.push_back("avx512_vnni");
  return names;
}

#ifdef ZSQ_WITH_CUDA
// ---------------------------------------------------------------------------------------------
// CUDA depthwise int8 conv (csrc/cuda/depthwise_dp4a.cu)

// Re-lays a depthwise weight for the dp4a kernel: int8 [C, kh, kw, 1] (any shape [C, taps...]),
// or packed int4 uint8 [C, (taps + 1) / 2] with w_int4.
std::tuple<at::Tensor, at::Tensor> int_depthwise_weight_relayout_cuda(const at::Tensor& w,
                                                                      int64_t taps, bool w_int4) {
  constexpr const char* fn = "int_depthwise_weight_relayout_cuda";
  TORCH_CHECK(w.is_cuda(), fn, ": w must be a CUDA tensor, got device ", w.device());
  TORCH_CHECK(w.dim() >= 2 && w.size(0) >= 1, fn, ": w must be [C, ...] with C >= 1, got shape ",
              w.sizes());
  TORCH_CHECK(taps >= 1, fn, ": taps (kh * kw) must be >= 1, got ", taps);
  const int64_t c = w.size(0);
  const int64_t per_channel = w.numel() / c;
  if (w_int4) {
    TORCH_CHECK(w.scalar_type() == at::kByte, fn,
                ": a packed int4 w must be uint8 (two values per byte), got ", w.scalar_type());
    TORCH_CHECK(per_channel == (taps + 1) / 2, fn, ": w has ", per_channel,
                " packed bytes per channel, which does not hold taps=", taps, " int4 values");
  } else {
    TORCH_CHECK(w.scalar_type() == at::kChar, fn, ": w must be int8 [C, kh, kw, 1], got ",
                w.scalar_type(), w.scalar_type() == at::kByte ? " (a packed int4 weight needs w_int4=True)" : "");
    TORCH_CHECK(per_channel == taps, fn, ": w has ", per_channel, " values per channel, expected taps=",
                taps);
  }
  const c10::cuda::CUDAGuard device_guard(w.device());
  const at::Tensor wc = w.contiguous();
  at::Tensor words = at::empty({(taps + 3) / 4, c}, wc.options().dtype(at::kInt));
  at::Tensor wsum = at::empty({c}, wc.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(w.device().index()).stream();
  check_launch(fn, zsq_depthwise_weight_relayout_cuda_launch(
                       static_cast<const uint8_t*>(wc.const_data_ptr()), c, taps, w_int4 ? 1 : 0,
                       words.mutable_data_ptr<int32_t>(), wsum.mutable_data_ptr<int32_t>(), stream));
  return {words, wsum};
}

at::Tensor int_depthwise_conv2d_nhwc_cuda(
    const at::Tensor& x, const at::Tensor& words, const at::Tensor& wsum, int64_t kh, int64_t kw,
    int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w,
    int64_t pad_value, int64_t out_kind, int64_t act_zero_point,
    const std::optional<at::Tensor>& weight_zero_point,
    const std::optional<at::Tensor>& weight_scale, const std::optional<at::Tensor>& act_scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
    double residual_scale, int64_t residual_zero_point, int64_t activation, double out_scale,
    int64_t out_zero_point, int64_t quant_min, int64_t quant_max) {
  constexpr const char* fn = "int_depthwise_conv2d_nhwc_cuda";
  TORCH_CHECK(x.dim() == 4, fn, ": x must be NHWC [B, H, W, C], got shape ", x.sizes());
  const int64_t c = x.size(3);
  const zsq::cpu::ConvShape s = check_conv_shape(fn, x, c, kh, kw, stride_h, stride_w, pad_h, pad_w,
                                                 dil_h, dil_w, c, pad_value, at::kCUDA);
  const int64_t taps = kh * kw;
  TORCH_CHECK(words.device() == x.device() && words.scalar_type() == at::kInt && words.is_contiguous() &&
                  words.dim() == 2 && words.size(0) == (taps + 3) / 4 && words.size(1) == c,
              fn, ": words must be the contiguous int32 [", (taps + 3) / 4, ", ", c, "] tensor on ",
              x.device(), " returned by int_depthwise_weight_relayout_cuda, got ", words.scalar_type(),
              " ", words.sizes(), " on ", words.device());
  TORCH_CHECK(wsum.device() == x.device() && wsum.scalar_type() == at::kInt && wsum.is_contiguous() &&
                  wsum.numel() == c,
              fn, ": wsum must be the contiguous int32 [", c, "] tensor returned by "
              "int_depthwise_weight_relayout_cuda");
  const int64_t m = s.batch * s.oh * s.ow;
  IntEpilogueArgs e = make_int_epilogue(fn, x.device(), m, c, out_kind, act_zero_point,
                                        weight_zero_point, weight_scale, act_scale, bias, residual,
                                        residual_scale, residual_zero_point, activation, out_scale,
                                        out_zero_point, quant_min, quant_max);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty({s.batch, s.oh, s.ow, c}, x.options().dtype(int_out_dtype(e.ep.out)));
  if (m == 0 || c == 0) return out;
  const at::Tensor xc = x.contiguous();
  ZsqConvGeometry g{s.batch, s.h, s.w, s.c, s.kh, s.kw, s.stride_h, s.stride_w,
                    s.pad_h, s.pad_w, s.dil_h, s.dil_w, s.oh, s.ow};
  const zsq::cpu::IntEpilogue& ep = e.ep;
  ZsqIntEpilogueCuda ce{};
  ce.act_zero_point = ep.act_zero_point;
  ce.weight_zero_point = ep.weight_zero_point;
  ce.wzp_per_channel = ep.wzp_per_channel ? 1 : 0;
  ce.weight_scale = ep.weight_scale;
  ce.wscale_per_channel = ep.wscale_per_channel ? 1 : 0;
  ce.act_scale = ep.act_scale;
  ce.ascale_per_row = ep.ascale_per_row ? 1 : 0;
  ce.bias = ep.bias;
  ce.residual = ep.residual;
  ce.residual_kind = static_cast<int>(ep.residual_kind);  // same codes as ZSQ_INT_OUT_*
  ce.residual_scale = ep.residual_scale;
  ce.residual_zero_point = ep.residual_zero_point;
  ce.activation = ep.activation;
  ce.out_kind = static_cast<int>(ep.out);
  ce.out_scale = ep.out_scale;
  ce.out_zero_point = ep.out_zero_point;
  ce.quant_min = ep.quant_min;
  ce.quant_max = ep.quant_max;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  check_launch(fn, zsq_depthwise_conv2d_dp4a_cuda_launch(
                       static_cast<const uint8_t*>(xc.const_data_ptr()),
                       x.scalar_type() == at::kChar ? 1 : 0, &g, static_cast<int32_t>(pad_value),
                       words.const_data_ptr<int32_t>(), wsum.const_data_ptr<int32_t>(), &ce,
                       out.mutable_data_ptr(), stream));
  return out;
}
#endif  // ZSQ_WITH_CUDA

// ---------------------------------------------------------------------------------------------
// Introspection

pybind11::dict cpu_capabilities() {
  const zsq::cpu::CpuFeatures f = zsq::cpu::query_cpu_features();
  pybind11::dict d;
  d["avx2"] = f.avx2;
  d["avx512f"] = f.avx512f;
  d["avx512bw"] = f.avx512bw;
  d["avx512_vnni"] = f.avx512_vnni;
  d["avx_vnni"] = f.avx_vnni;
  d["openmp"] = f.openmp;
  d["max_threads"] = f.max_threads;
  return d;
}

pybind11::dict build_info() {
  pybind11::dict d;
#ifdef ZSQ_WITH_CUDA
  d["with_cuda"] = true;
#else
  d["with_cuda"] = false;
#endif
  d["torch_version_built"] = torch_version_built();
  d["compiler"] = compiler_name();
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() =
      "zsq_engine native extension: INT4 packing kernels (CPU, CUDA), fused fake-quant CPU "
      "kernels and build introspection";
  bind_int_prepared(m);

  m.def("pack_int4_cpu", &pack_int4_cpu, pybind11::arg("x"),
        "Pack int4 values along the last dim.\n\n"
        "x: int8 tensor with values in [-8, 7] (signed) or uint8 in [0, 15] (unsigned), any shape\n"
        "[..., K] on the CPU. Returns uint8 [..., (K + 1) // 2]: element 2i -> low nibble of byte\n"
        "i, element 2i+1 -> high nibble; signed values as two's-complement nibbles; odd K padded\n"
        "with a zero nibble. Raises RuntimeError on out-of-range values or a wrong dtype.");
  m.def("unpack_int4_cpu", &unpack_int4_cpu, pybind11::arg("packed"), pybind11::arg("k"),
        pybind11::arg("is_signed"),
        "Inverse of pack_int4_cpu. packed: uint8 [..., (k + 1) // 2] on the CPU. Returns int8\n"
        "(sign-extended) [..., k] when is_signed, else uint8 [..., k] with values in [0, 15].");
  // fused fake-quant primitives: the argument order and meaning of zsq_engine/ops/reference/*
  m.def("fq_forward_cpu", &fq_forward_cpu, pybind11::arg("x"), pybind11::arg("scale"),
        pybind11::arg("zero_point"), pybind11::arg("quant_min"), pybind11::arg("quant_max"),
        pybind11::arg("axis"),
        "Fake-quantize x (float32/float16/bfloat16, contiguous, CPU): y = (clamp(round(x / s) +\n"
        "zp, quant_min, quant_max) - zp) * s in x's dtype, bit-identical to the reference.\n"
        "scale, zero_point: float32 [x.shape[axis]] (one element when axis is None); zero_point\n"
        "integer-valued.");
  m.def("fq_backward_cpu", &fq_backward_cpu, pybind11::arg("dy"), pybind11::arg("x"),
        pybind11::arg("scale"), pybind11::arg("zero_point"), pybind11::arg("quant_min"),
        pybind11::arg("quant_max"), pybind11::arg("axis"),
        "Straight-through gradient: dx = dy where quant_min <= round(x / s) + zp <= quant_max,\n"
        "else 0 (the mask is recomputed from x). dy: x's dtype and shape.");
  m.def("lsq_backward_cpu", &lsq_backward_cpu, pybind11::arg("dy"), pybind11::arg("x"),
        pybind11::arg("scale"), pybind11::arg("zero_point"), pybind11::arg("quant_min"),
        pybind11::arg("quant_max"), pybind11::arg("axis"), pybind11::arg("grad_factor"),
        "LSQ/LSQ+ backward in one pass: (dx in x's dtype, dscale float32 shaped like scale,\n"
        "dzero_point float32 shaped like zero_point). zero_point rounded and clamped to the range.");
  m.def("self_attention_forward_cpu", &self_attention_forward_cpu, pybind11::arg("u"),
        "softmax(u u^T) u per batch entry, u float32 [batch, L, C] contiguous; returns (out, lse)");
  m.def("self_attention_backward_cpu", &self_attention_backward_cpu, pybind11::arg("u"),
        pybind11::arg("out"), pybind11::arg("lse"), pybind11::arg("grad_out"),
        "gradient of self_attention_forward_cpu with respect to u (query + key + value)");
  m.def("qdrop_mix_cpu", &qdrop_mix_cpu, pybind11::arg("x_q"), pybind11::arg("x_fp"),
        pybind11::arg("p"), pybind11::arg("seed"), pybind11::arg("offset"),
        "QDrop mixing: x_q where uniform(seed, i + offset) < p, else x_fp (contiguous, same dtype)");
  m.def("qdrop_fq_forward_cpu", &qdrop_fq_forward_cpu, pybind11::arg("x"), pybind11::arg("scale"),
        pybind11::arg("zero_point"), pybind11::arg("quant_min"), pybind11::arg("quant_max"),
        pybind11::arg("axis"), pybind11::arg("p"), pybind11::arg("seed"), pybind11::arg("offset"),
        "fq_forward_cpu with QDrop: element i is quantized where uniform(seed, i + offset) < p\n"
        "(zsq_engine/ops/reference/rng.py), else passed through.");
  m.def("qdrop_fq_backward_cpu", &qdrop_fq_backward_cpu, pybind11::arg("dy"), pybind11::arg("x"),
        pybind11::arg("scale"), pybind11::arg("zero_point"), pybind11::arg("quant_min"),
        pybind11::arg("quant_max"), pybind11::arg("axis"), pybind11::arg("p"),
        pybind11::arg("seed"), pybind11::arg("offset"),
        "fq_backward_cpu with QDrop: dropped elements get dx = dy (mask recomputed, not stored).");
  m.def("qdrop_lsq_backward_cpu", &qdrop_lsq_backward_cpu, pybind11::arg("dy"),
        pybind11::arg("x"), pybind11::arg("scale"), pybind11::arg("zero_point"),
        pybind11::arg("quant_min"), pybind11::arg("quant_max"), pybind11::arg("axis"),
        pybind11::arg("grad_factor"), pybind11::arg("p"), pybind11::arg("seed"),
        pybind11::arg("offset"),
        "lsq_backward_cpu with QDrop: dropped elements get dx = dy and add nothing to the sums.");
  m.def("adaround_forward_cpu", &adaround_forward_cpu, pybind11::arg("w_floor"),
        pybind11::arg("alpha"), pybind11::arg("scale"), pybind11::arg("zero_point"),
        pybind11::arg("quant_min"), pybind11::arg("quant_max"), pybind11::arg("axis") = 0,
        pybind11::arg("hard") = false,
        "AdaRound weights (clamp(w_floor + h(alpha) + zp, quant_min, quant_max) - zp) * scale;\n"
        "h = rectified sigmoid (gamma=-0.1, zeta=1.1) or alpha >= 0 when hard. w_floor and alpha:\n"
        "one float dtype and shape; scale, zero_point float32 [x.shape[axis]].");
  m.def("adaround_backward_cpu", &adaround_backward_cpu, pybind11::arg("dy"),
        pybind11::arg("w_floor"), pybind11::arg("alpha"), pybind11::arg("scale"),
        pybind11::arg("zero_point"), pybind11::arg("quant_min"), pybind11::arg("quant_max"),
        pybind11::arg("axis") = 0,
        "Soft AdaRound gradients: (dalpha in alpha's dtype, dscale float32 shaped like scale).");
  m.def("adaround_reg_forward_cpu", &adaround_reg_forward_cpu, pybind11::arg("alpha"),
        pybind11::arg("beta"),
        "Rounding regulariser sum(1 - |2 h(alpha) - 1|^beta) as a float32 0-dim tensor (fp64 sum).");
  m.def("adaround_reg_backward_cpu", &adaround_reg_backward_cpu, pybind11::arg("grad_out"),
        pybind11::arg("alpha"), pybind11::arg("beta"),
        "grad_out (one-element float32) * d reg / d alpha, in alpha's dtype.");
  m.def("scale_search_cpu", &scale_search_cpu, pybind11::arg("x"), pybind11::arg("quant_min"),
        pybind11::arg("quant_max"), pybind11::arg("axis") = 0, pybind11::arg("num_candidates") = 80,
        pybind11::arg("p") = 2.4, pybind11::arg("symmetric") = false,
        "Lp clipping search (ratios 1, 0.99, ...): float32 (scale, zero_point) [x.shape[axis]]\n"
        "([1] when axis is None) minimising mean |x - fake_quant(x)|^p, all candidates and\n"
        "channels in one call.");
#ifdef ZSQ_WITH_CUDA
  m.def("pack_int4_cuda", &pack_int4_cuda, pybind11::arg("x"),
        "pack_int4_cpu for CUDA tensors (same layout). Synchronises once to report out-of-range "
        "values.");
  m.def("unpack_int4_cuda", &unpack_int4_cuda, pybind11::arg("packed"), pybind11::arg("k"),
        pybind11::arg("is_signed"), "unpack_int4_cpu for CUDA tensors (same layout).");
#endif
  m.def("bn_stats_forward_cpu", &bn_stats_forward_cpu, pybind11::arg("activations"),
        pybind11::arg("running_means"), pybind11::arg("running_vars"), pybind11::arg("per_image"),
        pybind11::arg("use_std"), pybind11::arg("unbiased"), pybind11::arg("std_eps"),
        pybind11::arg("eps_in_std"), pybind11::arg("normalize"), pybind11::arg("layer_mean"),
        "Fused BN-statistics loss of all layers (see zsq_engine/ops/reference/bn_stats.py).\n"
        "activations: list of CPU [N, C, H, W] / [N, C] fp32/fp16/bf16; running stats: lists of [C].\n"
        "normalize: 0 channels, 1 batch, 2 mean. Returns (loss fp32 0-dim, saved fp32 [3, G]).");
  m.def("bn_stats_backward_cpu", &bn_stats_backward_cpu, pybind11::arg("grad_out"),
        pybind11::arg("activations"), pybind11::arg("saved"), pybind11::arg("per_image"),
        pybind11::arg("use_std"), pybind11::arg("unbiased"), pybind11::arg("std_eps"),
        pybind11::arg("eps_in_std"), pybind11::arg("normalize"), pybind11::arg("layer_mean"),
        "Gradients of bn_stats_forward_cpu's loss w.r.t. each activation (its dtype and shape).");
  // CPU integer GEMM / conv: the qgemm / qconv2d_nhwc primitives. Epilogue arguments (after
  // the operands): out_kind (0 int32, 1 fp32, 2 fp16, 3 bf16, 4 int8, 5 uint8), act_zero_point,
  // weight_zero_point (int32 [N] / [1] or None), weight_scale (fp32 [N] / [1]), act_scale (fp32
  // [M] / [1]), bias (fp32 [N]), residual ([M, N] elements, fp32/fp16/bf16/int8/uint8),
  // residual_scale, residual_zero_point, activation (0 none, 1 relu, 2 relu6), out_scale,
  // out_zero_point, quant_min, quant_max (see zsq_engine/ops/epilogue.py).
#define ZSQ_INT_EPILOGUE_ARGS                                                                   \
  pybind11::arg("out_kind"), pybind11::arg("act_zero_point"), pybind11::arg("weight_zero_point"), \
      pybind11::arg("weight_scale"), pybind11::arg("act_scale"), pybind11::arg("bias"),           \
      pybind11::arg("residual"), pybind11::arg("residual_scale"),                                 \
      pybind11::arg("residual_zero_point"), pybind11::arg("activation"),                          \
      pybind11::arg("out_scale"), pybind11::arg("out_zero_point"), pybind11::arg("quant_min"),    \
      pybind11::arg("quant_max")
  m.def("int_pack_weight_cpu", &int_pack_weight_cpu, pybind11::arg("w"), pybind11::arg("groups"),
        pybind11::arg("w_int4"), pybind11::arg("k"),
        "Pack an integer weight for int_gemm_cpu / int_conv2d_nhwc_cpu, once per weight.\n"
        "w: int8 [N, k] (rows g * N/groups ... belong to group g), or with w_int4 packed signed\n"
        "int4 uint8 [N, (k + 1) // 2]. Returns (panels int8 [groups, ceil(N_g/16), ceil(k/4), 16, 4],\n"
        "colsum int32 [N] of the unpacked weight).");
  m.def("int_gemm_cpu", &int_gemm_cpu, pybind11::arg("a"), pybind11::arg("act_kind"), pybind11::arg("k"),
        pybind11::arg("panels"), pybind11::arg("colsum"), pybind11::arg("n"), ZSQ_INT_EPILOGUE_ARGS,
        pybind11::arg("isa") = 0,
        "epilogue(a @ w.T) for packed panels of w [n, k]. a: [M, k] int8 (act_kind 0) / uint8 (1),\n"
        "or packed [M, (k + 1) // 2] int4 (2) / uint4 (3). isa: 0 auto, 1 scalar, 2 avx2,\n"
        "3 avx512_vnni. Returns [M, n] of the out_kind dtype.");
  m.def("int_conv2d_nhwc_cpu", &int_conv2d_nhwc_cpu, pybind11::arg("x"), pybind11::arg("panels"),
        pybind11::arg("colsum"), pybind11::arg("o"), pybind11::arg("kh"), pybind11::arg("kw"),
        pybind11::arg("stride_h"), pybind11::arg("stride_w"), pybind11::arg("pad_h"),
        pybind11::arg("pad_w"), pybind11::arg("dil_h"), pybind11::arg("dil_w"),
        pybind11::arg("groups"), pybind11::arg("pad_value"), ZSQ_INT_EPILOGUE_ARGS,
        pybind11::arg("isa") = 0,
        "Implicit-GEMM conv: x int8/uint8 NHWC [B, H, W, C]; panels of the weight\n"
        "[O, kh, kw, C / groups] viewed as [O, kh * kw * C / groups] (int_pack_weight_cpu with\n"
        "groups). Out-of-image taps read pad_value. Returns NHWC [B, OH, OW, O].");
  m.def("int_depthwise_conv2d_nhwc_cpu", &int_depthwise_conv2d_nhwc_cpu, pybind11::arg("x"),
        pybind11::arg("w"), pybind11::arg("stride_h"), pybind11::arg("stride_w"),
        pybind11::arg("pad_h"), pybind11::arg("pad_w"), pybind11::arg("dil_h"),
        pybind11::arg("dil_w"), pybind11::arg("pad_value"), ZSQ_INT_EPILOGUE_ARGS,
        "Depthwise conv (groups == C == O): x int8/uint8 NHWC [B, H, W, C], w int8 [C, kh, kw, 1].\n"
        "Returns NHWC [B, OH, OW, C].");
#ifdef ZSQ_WITH_CUDA
  m.def("int_depthwise_weight_relayout_cuda", &int_depthwise_weight_relayout_cuda,
        pybind11::arg("w"), pybind11::arg("taps"), pybind11::arg("w_int4"),
        "Re-lay a depthwise weight for int_depthwise_conv2d_nhwc_cuda, once per weight.\n"
        "w: CUDA int8 [C, kh, kw, 1], or with w_int4 packed signed int4 uint8 [C, (taps + 1) // 2].\n"
        "Returns (words int32 [(taps + 3) // 4, C]: 4 taps of a channel per word; wsum int32 [C]).");
  m.def("int_depthwise_conv2d_nhwc_cuda", &int_depthwise_conv2d_nhwc_cuda, pybind11::arg("x"),
        pybind11::arg("words"), pybind11::arg("wsum"), pybind11::arg("kh"), pybind11::arg("kw"),
        pybind11::arg("stride_h"), pybind11::arg("stride_w"), pybind11::arg("pad_h"),
        pybind11::arg("pad_w"), pybind11::arg("dil_h"), pybind11::arg("dil_w"),
        pybind11::arg("pad_value"), ZSQ_INT_EPILOGUE_ARGS,
        "Depthwise int8 conv with dp4a (groups == C == O): x CUDA int8/uint8 NHWC [B, H, W, C];\n"
        "words / wsum from int_depthwise_weight_relayout_cuda; epilogue tensors on x's device.\n"
        "Returns NHWC [B, OH, OW, C].");
#endif
#undef ZSQ_INT_EPILOGUE_ARGS
  m.def("int8_peak_gmacs_cpu", [](double seconds) {
          TORCH_CHECK(seconds > 0.0 && seconds <= 10.0, "int8_peak_gmacs_cpu: seconds must be in (0, 10], got ",
                      seconds);
          return zsq::cpu::int8_peak_macs_per_second(seconds) / 1e9;
        }, pybind11::arg("seconds") = 0.2,
        "One core's measured int8 multiply-accumulate rate (G MAC/s) with independent AVX-512 VNNI\n"
        "dot products, run for about `seconds`; 0.0 when the CPU has no VNNI. The benchmarks' CPU\n"
        "hardware limit.");
  m.def("int_isas_cpu", &int_isas_cpu,
        "Names of the integer micro-kernel ISAs this CPU can run: 'scalar', 'avx2', 'avx512_vnni'.");
  m.def("cpu_capabilities", &cpu_capabilities,
        "Dict of booleans avx2, avx512f, avx512bw, avx512_vnni, avx_vnni, openmp (compiled with "
        "OpenMP) and int max_threads (OpenMP threads available).");
  m.def("build_info", &build_info,
        "Dict: with_cuda (bool, CUDA kernels compiled in), torch_version_built (str), compiler "
        "(str).");
}
