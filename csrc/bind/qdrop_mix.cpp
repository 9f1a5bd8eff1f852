// Binding of the QDrop input mix (csrc/cpu/qdrop_mix.cpp).
#include "bind/common.h"

#include "cpu/qdrop_mix.h"

namespace zsq::bind {
namespace {

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

}  // namespace

void bind_qdrop_mix(pybind11::module_& m) {
  m.def("qdrop_mix_cpu", &qdrop_mix_cpu, pybind11::arg("x_q"), pybind11::arg("x_fp"),
        pybind11::arg("p"), pybind11::arg("seed"), pybind11::arg("offset"),
        "QDrop mixing: x_q where uniform(seed, i + offset) < p, else x_fp (contiguous, same dtype)");
}

}  // namespace zsq::bind
