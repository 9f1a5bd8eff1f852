// Binding of the bound integer epilogue (csrc/bind/int_epilogue.h) as _C.IntEpilogue: the one
// argument through which every integer GEMM / conv call receives its epilogue.
#include "bind/int_epilogue.h"

namespace zsq::bind {

void bind_int_epilogue(pybind11::module_& m) {
  namespace py = pybind11;
  py::class_<BoundIntEpilogue>(
      m, "IntEpilogue",
      "The integer GEMM / conv epilogue bound once for the native calls (zsq_engine.ops.int_gemm.cpu."
      "bind_epilogue builds it from an Epilogue). IntEpilogue() is the plain int32 accumulator. Scales "
      "and bias are fp32 tensors ([N] or [1]; act_scale [M] or [1]), zero points int32; the residual "
      "itself is passed to each call, its dtype and grid bound here; a codes grid (fp32 outputs of a "
      "prepared call only) also writes the output as int8 / uint8 codes in the same pass.")
      .def(py::init<>())
      .def(py::init<at::ScalarType, int64_t, std::optional<at::Tensor>, std::optional<at::Tensor>,
                    std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::ScalarType>, double,
                    int64_t, const std::string&, double, int64_t, int64_t, int64_t,
                    std::optional<at::ScalarType>, double, int64_t, int64_t, int64_t>(),
           py::kw_only(), py::arg("out_dtype"), py::arg("act_zero_point") = 0,
           py::arg("weight_zero_point") = py::none(), py::arg("weight_scale") = py::none(),
           py::arg("act_scale") = py::none(), py::arg("bias") = py::none(), py::arg("residual_dtype") = py::none(),
           py::arg("residual_scale") = 1.0, py::arg("residual_zero_point") = 0, py::arg("activation") = "none",
           py::arg("out_scale") = 1.0, py::arg("out_zero_point") = 0, py::arg("quant_min") = 0,
           py::arg("quant_max") = 0, py::arg("codes_dtype") = py::none(), py::arg("codes_inv_scale") = 1.0,
           py::arg("codes_zero_point") = 0, py::arg("codes_min") = 0, py::arg("codes_max") = 0)
      .def_property_readonly("out_dtype", &BoundIntEpilogue::out_dtype)
      .def_property_readonly("residual_dtype", &BoundIntEpilogue::residual_dtype)
      .def_property_readonly("codes_dtype", &BoundIntEpilogue::codes_dtype)
      .def_property_readonly("activation", &BoundIntEpilogue::activation);
}

}  // namespace zsq::bind
