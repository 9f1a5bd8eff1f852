// Binding of the self-attention kernels (csrc/cpu/self_attention.cpp).
#include "bind/common.h"

#include "cpu/self_attention.h"

namespace zsq::bind {
namespace {

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

}  // namespace

void bind_self_attention(pybind11::module_& m) {
  m.def("self_attention_forward_cpu", &self_attention_forward_cpu, pybind11::arg("u"),
        "softmax(u u^T) u per batch entry, u float32 [batch, L, C] contiguous; returns (out, lse)");
  m.def("self_attention_backward_cpu", &self_attention_backward_cpu, pybind11::arg("u"),
        pybind11::arg("out"), pybind11::arg("lse"), pybind11::arg("grad_out"),
        "gradient of self_attention_forward_cpu with respect to u (query + key + value)");
}

}  // namespace zsq::bind
