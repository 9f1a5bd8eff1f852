// Binding of the fused fake-quant primitives fq_forward, fq_backward, lsq_backward and their QDrop forms
// (csrc/cpu/fake_quant.cpp); arguments as zsq_engine/ops/fake_quant/reference.py.
#include "bind/common.h"

#include "cpu/fake_quant.h"

namespace zsq::bind {
namespace {

at::Tensor fq_forward_impl(const char* fn, const at::Tensor& x, const at::Tensor& scale,
                           const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                           std::optional<int64_t> axis, const zsq::cpu::QDropParams* qdrop) {
  const QuantArgs a = check_quant_args(fn, "x", x, scale, zero_point, quant_min, quant_max, axis);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  zsq::cpu::fq_forward(a.type, x.const_data_ptr(), y.mutable_data_ptr(), a.layout,
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
  zsq::cpu::fq_backward(a.type, dy.const_data_ptr(), x.const_data_ptr(),
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> qdrop_lsq_backward_cpu(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
    std::optional<int64_t> axis, double grad_factor, double p, int64_t seed, int64_t offset) {
  constexpr const char* fn = "qdrop_lsq_backward_cpu";
  const zsq::cpu::QDropParams q = check_qdrop(fn, p, seed, offset);
  return lsq_backward_impl(fn, dy, x, scale, zero_point, quant_min, quant_max, axis, grad_factor,
                           &q);
}

}  // namespace

void bind_fake_quant(pybind11::module_& m) {
  // fused fake-quant primitives: the argument order and meaning of zsq_engine/ops/fake_quant/reference.py
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
}

}  // namespace zsq::bind
