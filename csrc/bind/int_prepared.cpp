// Prepared CPU integer conv / GEMM (the runtime's per-layer call; zsq_engine/ops/int_conv/cpu.py
// PreparedIntConv, zsq_engine/ops/int_gemm/cpu.py PreparedIntLinear). The constructor takes the
// packed weight and the bound epilogue (_C.IntEpilogue) once and checks them; a call checks only
// what changes per call (the activation, the residual, the optional output buffers) and runs the
// same drivers as int_conv2d_nhwc_cpu / int_depthwise_conv2d_nhwc_cpu / int_gemm_cpu. An epilogue
// bound with a codes grid also writes the fp32 output as codes of that grid in the same pass.
#include "bind/common.h"
#include "bind/int_epilogue.h"

#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/int_gemm.h"

namespace zsq::bind {
namespace {

enum class Mode : int { kConv, kDepthwise, kGemm };

Mode check_kind(const char* fn, const std::string& kind) {
  if (kind == "conv") return Mode::kConv;
  if (kind == "depthwise") return Mode::kDepthwise;
  if (kind == "gemm") return Mode::kGemm;
  TORCH_CHECK(false, fn, ": kind must be 'conv', 'depthwise' or 'gemm', got '", kind, "'");
  return Mode::kConv;
}

class IntPreparedCpu {
 public:
  // kind 'conv' (weight = packed panels), 'depthwise' (weight = int8 [C, kh, kw, 1]) or 'gemm'
  // (weight = packed panels, geometry ignored).
  IntPreparedCpu(const std::string& kind, at::Tensor weight, std::optional<at::Tensor> colsum, int64_t n,
                 int64_t k, int64_t kh, int64_t kw, std::vector<int64_t> geometry, int64_t groups,
                 int64_t pad_value, const BoundIntEpilogue& epilogue, const std::string& isa)
      : mode_(check_kind("IntPreparedCpu", kind)), weight_(std::move(weight)), n_(n), k_(k), kh_(kh), kw_(kw),
        groups_(groups), pad_value_(static_cast<int32_t>(pad_value)), epilogue_(epilogue) {
    constexpr const char* fn = "IntPreparedCpu";
    TORCH_CHECK(weight_.device().is_cpu() && weight_.scalar_type() == at::kChar && weight_.is_contiguous(), fn,
                ": weight must be a contiguous int8 CPU tensor");
    TORCH_CHECK(n >= 1 && k >= 1 && groups >= 1 && n % groups == 0, fn, ": bad n=", n, ", k=", k,
                ", groups=", groups);
    TORCH_CHECK(geometry.size() == 6, fn, ": geometry must be (stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)");
    geometry_ = geometry;
    if (mode_ != Mode::kDepthwise) {
      TORCH_CHECK(colsum.has_value() && colsum->scalar_type() == at::kInt && colsum->numel() == n &&
                      colsum->is_contiguous(),
                  fn, ": colsum must be the int32 [n] tensor returned by int_pack_weight_cpu");
      // a conv's panels are [groups, ...] over its reduction length k = kh * kw * C / groups, a
      // GEMM's over its K: the same layout
      const std::vector<int64_t> want = {groups, zsq::cpu::panel_blocks(n / groups), zsq::cpu::k_groups(k),
                                         zsq::cpu::kPanelCols, zsq::cpu::kPanelK};
      TORCH_CHECK(weight_.sizes() == at::IntArrayRef(want), fn, ": panels have shape ", weight_.sizes(),
                  ", expected ", at::IntArrayRef(want));
      colsum_ = *colsum;
    } else {
      TORCH_CHECK(weight_.dim() == 4 && weight_.size(0) == n && weight_.size(3) == 1, fn,
                  ": a depthwise weight must be int8 [C, kh, kw, 1]");
    }
    isa_ = check_int_isa(fn, isa);
    // every row of a prepared call shares one act_scale (m < 0: any number of rows)
    epilogue_.check_for(fn, at::Device(at::kCPU), -1, n);
  }

  // (out, codes) with codes undefined (None) when no second output was prepared.
  std::tuple<at::Tensor, std::optional<at::Tensor>> call(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                                         const std::optional<at::Tensor>& out,
                                                         const std::optional<at::Tensor>& codes) {
    constexpr const char* fn = "IntPreparedCpu";
    TORCH_CHECK(x.device().is_cpu() && (x.scalar_type() == at::kChar || x.scalar_type() == at::kByte), fn,
                ": x must be an int8 / uint8 CPU tensor, got ", x.scalar_type(), " on ", x.device());
    std::vector<int64_t> out_shape;
    zsq::cpu::ConvShape s{};
    int64_t m = 0;
    if (mode_ == Mode::kGemm) {
      TORCH_CHECK(x.dim() == 2 && x.size(1) == k_, fn, ": x must be [M, ", k_, "], got ", x.sizes());
      m = x.size(0);
      out_shape = {m, n_};
    } else {
      TORCH_CHECK(x.dim() == 4, fn, ": x must be NHWC [B, H, W, C], got ", x.sizes());
      const int64_t c = x.size(3);
      TORCH_CHECK(mode_ == Mode::kDepthwise ? c == n_ : c * kh_ * kw_ == k_ * groups_, fn, ": x has ", c,
                  " channels, which does not match the prepared weight");
      const auto& g = geometry_;
      s = zsq::cpu::ConvShape{x.size(0), x.size(1), x.size(2), c, n_, kh_, kw_, g[0], g[1], g[2], g[3],
                              g[4], g[5], mode_ == Mode::kDepthwise ? c : groups_, 0, 0};
      const int64_t span_h = s.h + 2 * g[2] - g[4] * (kh_ - 1) - 1, span_w = s.w + 2 * g[3] - g[5] * (kw_ - 1) - 1;
      TORCH_CHECK(span_h >= 0 && span_w >= 0, fn, ": the output would be empty for input ", s.h, "x", s.w);
      s.oh = span_h / g[0] + 1;
      s.ow = span_w / g[1] + 1;
      const bool is_signed = x.scalar_type() == at::kChar;
      TORCH_CHECK(is_signed ? (pad_value_ >= -128 && pad_value_ <= 127) : (pad_value_ >= 0 && pad_value_ <= 255),
                  fn, ": pad_value does not fit ", x.scalar_type());
      m = s.batch * s.oh * s.ow;
      out_shape = {s.batch, s.oh, s.ow, n_};
    }
    at::Tensor res_keep;
    zsq::cpu::IntEpilogue ep = epilogue_.resolve(fn, at::Device(at::kCPU), m, n_, residual, res_keep);
    at::Tensor o = take_buffer(fn, "out", out, out_shape, epilogue_.out_dtype(), x);
    std::optional<at::Tensor> q;
    if (const auto codes_dtype = epilogue_.codes_dtype()) {
      q = take_buffer(fn, "codes", codes, out_shape, *codes_dtype, x);
      ep.codes = q->mutable_data_ptr();
    } else {
      TORCH_CHECK(!codes.has_value(), fn, ": this call was prepared without a codes output");
    }
    if (m == 0) return {o, q};
    const at::Tensor xc = x.contiguous();
    const auto act = x.scalar_type() == at::kChar ? zsq::cpu::ActKind::kInt8 : zsq::cpu::ActKind::kUint8;
    const int threads = at::get_num_threads();
    if (mode_ == Mode::kGemm) {
      zsq::cpu::int_gemm(static_cast<const uint8_t*>(xc.const_data_ptr()), xc.stride(0), act, m, n_, k_,
                         weight_.const_data_ptr<int8_t>(), colsum_.const_data_ptr<int32_t>(), ep,
                         o.mutable_data_ptr(), isa_, threads);
    } else if (mode_ == Mode::kDepthwise) {
      zsq::cpu::int_depthwise_conv2d_nhwc(static_cast<const uint8_t*>(xc.const_data_ptr()), act, s, pad_value_,
                                          weight_.const_data_ptr<int8_t>(), ep, o.mutable_data_ptr(), threads);
    } else {
      zsq::cpu::int_conv2d_nhwc(static_cast<const uint8_t*>(xc.const_data_ptr()), act, s, pad_value_,
                                weight_.const_data_ptr<int8_t>(), colsum_.const_data_ptr<int32_t>(), ep,
                                o.mutable_data_ptr(), isa_, threads);
    }
    return {o, q};
  }

 private:
  static at::Tensor take_buffer(const char* fn, const char* name, const std::optional<at::Tensor>& given,
                                const std::vector<int64_t>& shape, at::ScalarType dtype, const at::Tensor& x) {
    if (!given.has_value()) return at::empty(shape, x.options().dtype(dtype));
    const at::Tensor& b = *given;
    TORCH_CHECK(b.device().is_cpu() && b.scalar_type() == dtype && b.is_contiguous() &&
                    b.sizes() == at::IntArrayRef(shape),
                fn, ": ", name, " must be a contiguous ", dtype, " CPU tensor of shape ", at::IntArrayRef(shape),
                ", got ", b.scalar_type(), " ", b.sizes());
    return b;
  }

  Mode mode_;
  at::Tensor weight_, colsum_;
  int64_t n_, k_, kh_, kw_, groups_;
  int32_t pad_value_;
  std::vector<int64_t> geometry_;
  zsq::cpu::IntIsa isa_ = zsq::cpu::IntIsa::kAuto;
  BoundIntEpilogue epilogue_;
};

}  // namespace

void bind_int_prepared(pybind11::module_& m) {
  namespace py = pybind11;
  py::class_<IntPreparedCpu>(m, "IntPreparedCpu",
                             "A CPU integer conv / depthwise conv / GEMM with its weight and epilogue bound "
                             "(zsq_engine.ops.int_conv.cpu.PreparedIntConv, "
                             "zsq_engine.ops.int_gemm.cpu.PreparedIntLinear).")
      .def(py::init<const std::string&, at::Tensor, std::optional<at::Tensor>, int64_t, int64_t, int64_t, int64_t,
                    std::vector<int64_t>, int64_t, int64_t, const BoundIntEpilogue&, const std::string&>(),
           py::arg("kind"), py::arg("weight"), py::arg("colsum"), py::arg("n"), py::arg("k"), py::arg("kh"),
           py::arg("kw"), py::arg("geometry"), py::arg("groups"), py::arg("pad_value"), py::arg("epilogue"),
           py::arg("isa") = "auto")
      .def("__call__", &IntPreparedCpu::call, py::arg("x"), py::arg("residual") = py::none(),
           py::arg("out") = py::none(), py::arg("codes") = py::none(),
           "(out, codes): the output (into `out` when given) and, when prepared with a codes grid, "
           "the same fp32 values as codes (into `codes` when given; else None)");
}

}  // namespace zsq::bind
