// Prepared CPU integer conv / GEMM (the runtime's per-layer call; zsq_engine/ops/backends/cpu_int.py
// PreparedIntConv / PreparedIntLinear). The constructor takes the packed weight and the epilogue
// once and checks them; a call checks only what changes per call (the activation, the residual,
// the optional output buffers) and runs the same drivers as int_conv2d_nhwc_cpu /
// int_depthwise_conv2d_nhwc_cpu / int_gemm_cpu. Optionally the fp32 output is also written as
// codes of one activation grid in the same pass (IntEpilogue::codes).
#include "bind/int_prepared.h"

#include <torch/extension.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "cpu/int_gemm.h"

namespace {

using zsq::cpu::OutKind;

enum class Mode : int { kConv = 0, kDepthwise = 1, kGemm = 2 };

at::ScalarType kind_dtype(OutKind k) {
  switch (k) {
    case OutKind::kInt32: return at::kInt;
    case OutKind::kFloat32: return at::kFloat;
    case OutKind::kFloat16: return at::kHalf;
    case OutKind::kBFloat16: return at::kBFloat16;
    case OutKind::kInt8: return at::kChar;
    case OutKind::kUint8: return at::kByte;
  }
  return at::kInt;
}

at::Tensor f32_vector(const char* what, const at::Tensor& t, int64_t n) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 1 &&
                  (t.numel() == n || t.numel() == 1),
              "IntPreparedCpu: ", what, " must be a 1-D fp32 CPU tensor of ", n, " or 1 elements, got ",
              t.scalar_type(), " ", t.sizes());
  return t.contiguous();
}

class IntPreparedCpu {
 public:
  // mode 0 conv (weight = packed panels), 1 depthwise (weight = int8 [C, kh, kw, 1]), 2 GEMM
  // (weight = packed panels, geometry ignored). Epilogue fields as in cpu_int.BoundEpilogue;
  // residual_kind -1: the calls pass no residual; codes_kind -1: no second output.
  IntPreparedCpu(int64_t mode, at::Tensor weight, std::optional<at::Tensor> colsum, int64_t n, int64_t k,
                 int64_t kh, int64_t kw, std::vector<int64_t> geometry, int64_t groups, int64_t pad_value,
                 int64_t out_kind, int64_t act_zero_point, std::optional<at::Tensor> weight_zero_point,
                 std::optional<at::Tensor> weight_scale, std::optional<at::Tensor> act_scale,
                 std::optional<at::Tensor> bias, int64_t residual_kind, double residual_scale,
                 int64_t residual_zero_point, int64_t activation, double out_scale, int64_t out_zero_point,
                 int64_t quant_min, int64_t quant_max, int64_t codes_kind, double codes_inv_scale,
                 int64_t codes_zero_point, int64_t codes_min, int64_t codes_max, int64_t isa)
      : mode_(static_cast<Mode>(mode)), weight_(std::move(weight)), n_(n), k_(k), kh_(kh), kw_(kw),
        groups_(groups), pad_value_(static_cast<int32_t>(pad_value)) {
    constexpr const char* fn = "IntPreparedCpu";
    TORCH_CHECK(mode >= 0 && mode <= 2, fn, ": mode must be 0 (conv), 1 (depthwise) or 2 (gemm), got ", mode);
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
      const std::vector<int64_t> want = {groups, zsq::cpu::panel_blocks(n / groups),
                                         zsq::cpu::k_groups(mode_ == Mode::kGemm ? k : k),
                                         zsq::cpu::kPanelCols, zsq::cpu::kPanelK};
      TORCH_CHECK(weight_.sizes() == at::IntArrayRef(want), fn, ": panels have shape ", weight_.sizes(),
                  ", expected ", at::IntArrayRef(want));
      colsum_ = *colsum;
    } else {
      TORCH_CHECK(weight_.dim() == 4 && weight_.size(0) == n && weight_.size(3) == 1, fn,
                  ": a depthwise weight must be int8 [C, kh, kw, 1]");
    }
    isa_ = static_cast<zsq::cpu::IntIsa>(isa);
    TORCH_CHECK(isa >= 0 && isa <= 3 && zsq::cpu::int_isa_supported(isa_), fn, ": isa=", isa,
                " is not supported by this CPU");
    TORCH_CHECK(out_kind >= 0 && out_kind <= 5, fn, ": out_kind must be 0..5, got ", out_kind);
    auto& ep = ep_;
    ep.out = static_cast<OutKind>(out_kind);
    ep.act_zero_point = static_cast<int32_t>(act_zero_point);
    if (weight_zero_point.has_value()) {
      const at::Tensor& z = *weight_zero_point;
      TORCH_CHECK(z.scalar_type() == at::kInt && z.dim() == 1 && (z.numel() == n || z.numel() == 1), fn,
                  ": weight_zero_point must be int32 [n] or [1]");
      keep_.push_back(z.contiguous());
      ep.weight_zero_point = keep_.back().const_data_ptr<int32_t>();
      ep.wzp_per_channel = z.numel() == n && n != 1;
    }
    if (ep.out != OutKind::kInt32) {
      TORCH_CHECK(weight_scale.has_value() && act_scale.has_value(), fn, ": needs weight_scale and act_scale");
      keep_.push_back(f32_vector("weight_scale", *weight_scale, n));
      ep.weight_scale = keep_.back().const_data_ptr<float>();
      ep.wscale_per_channel = keep_.back().numel() == n && n != 1;
      TORCH_CHECK(act_scale->numel() == 1, fn, ": a prepared call takes a per-tensor act_scale");
      keep_.push_back(f32_vector("act_scale", *act_scale, 1));
      ep.act_scale = keep_.back().const_data_ptr<float>();
      if (bias.has_value()) {
        TORCH_CHECK(bias->numel() == n, fn, ": bias must have n=", n, " elements");
        keep_.push_back(f32_vector("bias", *bias, n));
        ep.bias = keep_.back().const_data_ptr<float>();
      }
      TORCH_CHECK(activation >= 0 && activation <= 2, fn, ": activation must be 0, 1 or 2");
      ep.activation = static_cast<int>(activation);
      if (ep.out == OutKind::kInt8 || ep.out == OutKind::kUint8) {
        TORCH_CHECK(out_scale > 0.0 && std::isfinite(out_scale) && quant_min < quant_max, fn,
                    ": bad out_scale / quant range");
        ep.out_scale = static_cast<float>(out_scale);
        ep.out_zero_point = static_cast<int32_t>(out_zero_point);
        ep.quant_min = static_cast<int32_t>(quant_min);
        ep.quant_max = static_cast<int32_t>(quant_max);
      }
    }
    TORCH_CHECK(residual_kind == -1 || (residual_kind >= 1 && residual_kind <= 5 && ep.out != OutKind::kInt32),
                fn, ": residual_kind must be -1 (none) or 1..5 with a dequantising epilogue, got ", residual_kind);
    residual_kind_ = residual_kind;
    if (residual_kind >= 0) ep.residual_kind = static_cast<OutKind>(residual_kind);
    ep.residual_scale = static_cast<float>(residual_scale);
    ep.residual_zero_point = static_cast<int32_t>(residual_zero_point);
    TORCH_CHECK(codes_kind == -1 || ((codes_kind == 4 || codes_kind == 5) && ep.out == OutKind::kFloat32), fn,
                ": codes_kind must be -1 (none), or 4 (int8) / 5 (uint8) with an fp32 output, got ", codes_kind);
    codes_kind_ = codes_kind;
    if (codes_kind >= 0) {
      const int64_t lo = codes_kind == 4 ? -128 : 0, hi = codes_kind == 4 ? 127 : 255;
      TORCH_CHECK(codes_min >= lo && codes_max <= hi && codes_min < codes_max && codes_inv_scale > 0.0 &&
                      std::isfinite(codes_inv_scale),
                  fn, ": bad codes grid");
      ep.codes_kind = static_cast<OutKind>(codes_kind);
      ep.codes_inv_scale = static_cast<float>(codes_inv_scale);
      ep.codes_zero_point = static_cast<int32_t>(codes_zero_point);
      ep.codes_min = static_cast<int32_t>(codes_min);
      ep.codes_max = static_cast<int32_t>(codes_max);
    }
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
    zsq::cpu::IntEpilogue ep = ep_;
    at::Tensor res_keep;
    if (residual.has_value()) {
      TORCH_CHECK(residual_kind_ >= 0, fn, ": this call was prepared without a residual");
      const at::Tensor& r = *residual;
      TORCH_CHECK(r.device().is_cpu() && r.scalar_type() == kind_dtype(ep.residual_kind) && r.numel() == m * n_, fn,
                  ": residual must be ", kind_dtype(ep.residual_kind), " with ", m * n_, " elements, got ",
                  r.scalar_type(), " ", r.sizes());
      res_keep = r.contiguous();
      ep.residual = res_keep.const_data_ptr();
    } else {
      TORCH_CHECK(residual_kind_ < 0, fn, ": this call was prepared with a residual; pass it");
    }
    at::Tensor o = take_buffer(fn, "out", out, out_shape, kind_dtype(ep.out), x);
    std::optional<at::Tensor> q;
    if (codes_kind_ >= 0) {
      q = take_buffer(fn, "codes", codes, out_shape, kind_dtype(ep.codes_kind), x);
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
  zsq::cpu::IntEpilogue ep_;
  std::vector<at::Tensor> keep_;
  int64_t residual_kind_ = -1, codes_kind_ = -1;
};

}  // namespace

void bind_int_prepared(pybind11::module_& m) {
  namespace py = pybind11;
  py::class_<IntPreparedCpu>(m, "IntPreparedCpu",
                             "A CPU integer conv / depthwise conv / GEMM with its weight and epilogue bound "
                             "(zsq_engine.ops.backends.cpu_int.PreparedIntConv / PreparedIntLinear).")
      .def(py::init<int64_t, at::Tensor, std::optional<at::Tensor>, int64_t, int64_t, int64_t, int64_t,
                    std::vector<int64_t>, int64_t, int64_t, int64_t, int64_t, std::optional<at::Tensor>,
                    std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>, int64_t,
                    double, int64_t, int64_t, double, int64_t, int64_t, int64_t, int64_t, double, int64_t,
                    int64_t, int64_t, int64_t>(),
           py::arg("mode"), py::arg("weight"), py::arg("colsum"), py::arg("n"), py::arg("k"), py::arg("kh"),
           py::arg("kw"), py::arg("geometry"), py::arg("groups"), py::arg("pad_value"), py::arg("out_kind"),
           py::arg("act_zero_point"), py::arg("weight_zero_point"), py::arg("weight_scale"),
           py::arg("act_scale"), py::arg("bias"), py::arg("residual_kind"), py::arg("residual_scale"),
           py::arg("residual_zero_point"), py::arg("activation"), py::arg("out_scale"),
           py::arg("out_zero_point"), py::arg("quant_min"), py::arg("quant_max"), py::arg("codes_kind"),
           py::arg("codes_inv_scale"), py::arg("codes_zero_point"), py::arg("codes_min"), py::arg("codes_max"),
           py::arg("isa"))
      .def("__call__", &IntPreparedCpu::call, py::arg("x"), py::arg("residual") = py::none(),
           py::arg("out") = py::none(), py::arg("codes") = py::none(),
           "(out, codes): the output (into `out` when given) and, when prepared with a codes grid, "
           "the same fp32 values as codes (into `codes` when given; else None)");
}
