// Binding of the integer GEMM kernels (csrc/cpu/int_gemm*.cpp): the qgemm / int_mm primitives and
// the weight packing the conv shares (int_pack_weight_cpu).
#include "bind/common.h"
#include "bind/int_epilogue.h"

#include "cpu/int_gemm.h"

namespace zsq::bind {
namespace {

// How the activation bytes of a GEMM are stored: 'int8', 'uint8', or packed 'int4' / 'uint4'.
zsq::cpu::ActKind check_act_format(const char* fn, const std::string& a_format) {
  using zsq::cpu::ActKind;
  if (a_format == "int8") return ActKind::kInt8;
  if (a_format == "uint8") return ActKind::kUint8;
  if (a_format == "int4") return ActKind::kInt4;
  if (a_format == "uint4") return ActKind::kUint4;
  TORCH_CHECK(false, fn, ": a_format must be 'int8', 'uint8', 'int4' or 'uint4' (packed), got '", a_format, "'");
  return ActKind::kInt8;
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

at::Tensor int_gemm_cpu(const at::Tensor& a, const std::string& a_format, int64_t k, const at::Tensor& panels,
                        const at::Tensor& colsum, int64_t n, const BoundIntEpilogue& epilogue,
                        const std::optional<at::Tensor>& residual, const std::string& isa) {
  constexpr const char* fn = "int_gemm_cpu";
  const zsq::cpu::ActKind act = check_act_format(fn, a_format);
  const bool packed = act == zsq::cpu::ActKind::kInt4 || act == zsq::cpu::ActKind::kUint4;
  TORCH_CHECK(a.device().is_cpu() && a.dim() == 2, fn, ": a must be a 2-D CPU tensor, got ",
              a.device(), " with shape ", a.sizes());
  const at::ScalarType want = act == zsq::cpu::ActKind::kInt8 ? at::kChar : at::kByte;
  TORCH_CHECK(a.scalar_type() == want, fn, ": a must be ", want, " for a_format='", a_format, "', got ",
              a.scalar_type());
  TORCH_CHECK(k >= 1, fn, ": k must be >= 1, got ", k);
  const int64_t cols = packed ? (k + 1) / 2 : k;
  TORCH_CHECK(a.size(1) == cols, fn, ": a has ", a.size(1), " columns, expected ", cols, " for k=", k,
              packed ? " (packed int4)" : "");
  TORCH_CHECK(n >= 1, fn, ": n must be >= 1, got ", n);
  check_panels(fn, panels, colsum, 1, n, k);
  const auto isa_v = check_int_isa(fn, isa);
  const at::Tensor ac = (a.stride(1) == 1 && a.stride(0) >= cols) ? a : a.contiguous();
  const int64_t m = a.size(0);
  at::Tensor keep;
  const zsq::cpu::IntEpilogue ep = raw_epilogue(fn, epilogue, at::Device(at::kCPU), m, n, residual, keep);
  at::Tensor out = at::empty({m, n}, a.options().dtype(epilogue.out_dtype()));
  if (m == 0) return out;
  zsq::cpu::int_gemm(static_cast<const uint8_t*>(ac.const_data_ptr()), ac.stride(0), act, m, n, k,
                     panels.const_data_ptr<int8_t>(), colsum.const_data_ptr<int32_t>(), ep,
                     out.mutable_data_ptr(), isa_v, at::get_num_threads());
  return out;
}

std::vector<std::string> int_isas_cpu() {
  std::vector<std::string> names = {"scalar"};
  if (zsq::cpu::int_isa_supported(zsq::cpu::IntIsa::kAvx2)) names.push_back("avx2");
  if (zsq::cpu::int_isa_supported(zsq::cpu::IntIsa::kAvx512Vnni)) names.push_back("avx512_vnni");
  return names;
}

}  // namespace

void bind_int_gemm(pybind11::module_& m) {
  // The CPU integer GEMM (the qgemm / int_mm primitives) and the weight packing it shares with the
  // conv. It takes the epilogue as one bound _C.IntEpilogue (csrc/bind/int_epilogue.h) and the
  // residual it adds, if any.
  m.def("int_pack_weight_cpu", &int_pack_weight_cpu, pybind11::arg("w"), pybind11::arg("groups"),
        pybind11::arg("w_int4"), pybind11::arg("k"),
        "Pack an integer weight for int_gemm_cpu / int_conv2d_nhwc_cpu, once per weight.\n"
        "w: int8 [N, k] (rows g * N/groups ... belong to group g), or with w_int4 packed signed\n"
        "int4 uint8 [N, (k + 1) // 2]. Returns (panels int8 [groups, ceil(N_g/16), ceil(k/4), 16, 4],\n"
        "colsum int32 [N] of the unpacked weight).");
  m.def("int_gemm_cpu", &int_gemm_cpu, pybind11::arg("a"), pybind11::arg("a_format"), pybind11::arg("k"),
        pybind11::arg("panels"), pybind11::arg("colsum"), pybind11::arg("n"), pybind11::arg("epilogue"),
        pybind11::arg("residual") = pybind11::none(), pybind11::arg("isa") = "auto",
        "epilogue(a @ w.T) for packed panels of w [n, k]. a: [M, k] int8 (a_format 'int8') / uint8\n"
        "('uint8'), or packed [M, (k + 1) // 2] 'int4' / 'uint4'. isa: 'auto', 'scalar', 'avx2',\n"
        "'avx512_vnni'. Returns [M, n] of the epilogue's out_dtype.");
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
}

}  // namespace zsq::bind
