// Binding of the integer GEMM / conv kernels (csrc/cpu/int_*.cpp, csrc/cuda/depthwise_dp4a.cu):
// the qgemm / qconv2d_nhwc primitives.
#include "bind/common.h"

#include "cpu/int_gemm.h"
#ifdef ZSQ_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "cuda/launchers.h"
#endif

namespace zsq::bind {
namespace {

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

}  // namespace

void bind_int_gemm(pybind11::module_& m) {
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
}

}  // namespace zsq::bind
