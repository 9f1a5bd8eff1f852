// Binding of the integer NHWC conv kernels: the qconv2d_nhwc primitive on the CPU (an implicit GEMM
// on the GEMM's packed panels, csrc/cpu/int_conv.cpp; the depthwise kernel,
// csrc/cpu/int_conv_depthwise.cpp) and on CUDA (depthwise dp4a, csrc/cuda/depthwise_dp4a.cu).
#include "bind/common.h"
#include "bind/int_epilogue.h"

#include "cpu/int_gemm.h"
#ifdef ZSQ_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "cuda/launchers.h"
#endif

namespace zsq::bind {
namespace {

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
                               int64_t groups, int64_t pad_value, const BoundIntEpilogue& epilogue,
                               const std::optional<at::Tensor>& residual, const std::string& isa) {
  constexpr const char* fn = "int_conv2d_nhwc_cpu";
  const zsq::cpu::ConvShape s = check_conv_shape(fn, x, o, kh, kw, stride_h, stride_w, pad_h, pad_w,
                                                 dil_h, dil_w, groups, pad_value);
  check_panels(fn, panels, colsum, groups, o / groups, kh * kw * (s.c / groups));
  const auto isa_v = check_int_isa(fn, isa);
  const int64_t m = s.batch * s.oh * s.ow;
  at::Tensor keep;
  const zsq::cpu::IntEpilogue ep = raw_epilogue(fn, epilogue, at::Device(at::kCPU), m, o, residual, keep);
  at::Tensor out = at::empty({s.batch, s.oh, s.ow, o}, x.options().dtype(epilogue.out_dtype()));
  if (m == 0 || s.c == 0) {
    TORCH_CHECK(m == 0, fn, ": x has no channels");
    return out;
  }
  const at::Tensor xc = x.contiguous();
  zsq::cpu::int_conv2d_nhwc(static_cast<const uint8_t*>(xc.const_data_ptr()),
                            x.scalar_type() == at::kChar ? zsq::cpu::ActKind::kInt8 : zsq::cpu::ActKind::kUint8,
                            s, static_cast<int32_t>(pad_value), panels.const_data_ptr<int8_t>(),
                            colsum.const_data_ptr<int32_t>(), ep, out.mutable_data_ptr(), isa_v,
                            at::get_num_threads());
  return out;
}

at::Tensor int_depthwise_conv2d_nhwc_cpu(const at::Tensor& x, const at::Tensor& w, int64_t stride_h,
                                         int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h,
                                         int64_t dil_w, int64_t pad_value, const BoundIntEpilogue& epilogue,
                                         const std::optional<at::Tensor>& residual) {
  constexpr const char* fn = "int_depthwise_conv2d_nhwc_cpu";
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kChar && w.dim() == 4 && w.size(3) == 1,
              fn, ": w must be an int8 CPU tensor [C, kh, kw, 1], got ", w.scalar_type(), " ", w.sizes());
  TORCH_CHECK(x.dim() == 4 && w.size(0) == x.size(3), fn, ": w has ", w.size(0),
              " channels but x (NHWC) has ", x.dim() == 4 ? x.size(3) : -1);
  const zsq::cpu::ConvShape s = check_conv_shape(fn, x, w.size(0), w.size(1), w.size(2), stride_h,
                                                 stride_w, pad_h, pad_w, dil_h, dil_w, x.size(3),
                                                 pad_value);
  const int64_t m = s.batch * s.oh * s.ow;
  at::Tensor keep;
  const zsq::cpu::IntEpilogue ep = raw_epilogue(fn, epilogue, at::Device(at::kCPU), m, s.c, residual, keep);
  at::Tensor out = at::empty({s.batch, s.oh, s.ow, s.c}, x.options().dtype(epilogue.out_dtype()));
  if (m == 0 || s.c == 0) return out;
  const at::Tensor xc = x.contiguous();
  const at::Tensor wc = w.contiguous();
  zsq::cpu::int_depthwise_conv2d_nhwc(
      static_cast<const uint8_t*>(xc.const_data_ptr()),
      x.scalar_type() == at::kChar ? zsq::cpu::ActKind::kInt8 : zsq::cpu::ActKind::kUint8, s,
      static_cast<int32_t>(pad_value), wc.const_data_ptr<int8_t>(), ep, out.mutable_data_ptr(),
      at::get_num_threads());
  return out;
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

at::Tensor int_depthwise_conv2d_nhwc_cuda(const at::Tensor& x, const at::Tensor& words, const at::Tensor& wsum,
                                          int64_t kh, int64_t kw, int64_t stride_h, int64_t stride_w,
                                          int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w,
                                          int64_t pad_value, const BoundIntEpilogue& epilogue,
                                          const std::optional<at::Tensor>& residual) {
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
  at::Tensor keep;
  const zsq::cpu::IntEpilogue ep = raw_epilogue(fn, epilogue, x.device(), m, c, residual, keep);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty({s.batch, s.oh, s.ow, c}, x.options().dtype(epilogue.out_dtype()));
  if (m == 0 || c == 0) return out;
  const at::Tensor xc = x.contiguous();
  ZsqConvGeometry g{s.batch, s.h, s.w, s.c, s.kh, s.kw, s.stride_h, s.stride_w,
                    s.pad_h, s.pad_w, s.dil_h, s.dil_w, s.oh, s.ow};
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

void bind_int_conv(pybind11::module_& m) {
  // Each takes the epilogue as one bound _C.IntEpilogue (csrc/bind/int_epilogue.h) and the
  // residual it adds, if any.
  m.def("int_conv2d_nhwc_cpu", &int_conv2d_nhwc_cpu, pybind11::arg("x"), pybind11::arg("panels"),
        pybind11::arg("colsum"), pybind11::arg("o"), pybind11::arg("kh"), pybind11::arg("kw"),
        pybind11::arg("stride_h"), pybind11::arg("stride_w"), pybind11::arg("pad_h"),
        pybind11::arg("pad_w"), pybind11::arg("dil_h"), pybind11::arg("dil_w"),
        pybind11::arg("groups"), pybind11::arg("pad_value"), pybind11::arg("epilogue"),
        pybind11::arg("residual") = pybind11::none(), pybind11::arg("isa") = "auto",
        "Implicit-GEMM conv: x int8/uint8 NHWC [B, H, W, C]; panels of the weight\n"
        "[O, kh, kw, C / groups] viewed as [O, kh * kw * C / groups] (int_pack_weight_cpu with\n"
        "groups). Out-of-image taps read pad_value. Returns NHWC [B, OH, OW, O].");
  m.def("int_depthwise_conv2d_nhwc_cpu", &int_depthwise_conv2d_nhwc_cpu, pybind11::arg("x"),
        pybind11::arg("w"), pybind11::arg("stride_h"), pybind11::arg("stride_w"),
        pybind11::arg("pad_h"), pybind11::arg("pad_w"), pybind11::arg("dil_h"),
        pybind11::arg("dil_w"), pybind11::arg("pad_value"), pybind11::arg("epilogue"),
        pybind11::arg("residual") = pybind11::none(),
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
        pybind11::arg("pad_value"), pybind11::arg("epilogue"), pybind11::arg("residual") = pybind11::none(),
        "Depthwise int8 conv with dp4a (groups == C == O): x CUDA int8/uint8 NHWC [B, H, W, C];\n"
        "words / wsum from int_depthwise_weight_relayout_cuda; epilogue tensors on x's device.\n"
        "Returns NHWC [B, OH, OW, C].");
#endif
}

}  // namespace zsq::bind
