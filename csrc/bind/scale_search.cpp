// Binding of the Lp scale search (csrc/cpu/scale_search.cpp).
#include "bind/common.h"

#include "cpu/scale_search.h"

namespace zsq::bind {
namespace {

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

}  // namespace

void bind_scale_search(pybind11::module_& m) {
  m.def("scale_search_cpu", &scale_search_cpu, pybind11::arg("x"), pybind11::arg("quant_min"),
        pybind11::arg("quant_max"), pybind11::arg("axis") = 0, pybind11::arg("num_candidates") = 80,
        pybind11::arg("p") = 2.4, pybind11::arg("symmetric") = false,
        "Lp clipping search (ratios 1, 0.99, ...): float32 (scale, zero_point) [x.shape[axis]]\n"
        "([1] when axis is None) minimising mean |x - fake_quant(x)|^p, all candidates and\n"
        "channels in one call.");
}

}  // namespace zsq::bind
