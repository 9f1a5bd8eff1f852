// Binding of the AdaRound primitives (csrc/cpu/adaround.cpp).
#include "bind/common.h"

#include "cpu/adaround.h"

namespace zsq::bind {
namespace {

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

}  // namespace

void bind_adaround(pybind11::module_& m) {
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
}

}  // namespace zsq::bind
