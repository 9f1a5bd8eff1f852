// The integer GEMM / conv epilogue as every native integer call takes it: one typed object,
// `_C.IntEpilogue`, built once from the Python `Epilogue` (zsq_engine/ops/int_gemm/cpu.py,
// bind_epilogue) with named fields, dtypes and an activation name. It checks everything that does
// not depend on a call's shape when it is built; a call (`resolve`) checks only the sizes against
// [m, n], the device and the residual, and fills the kernels' torch-free zsq::cpu::IntEpilogue.
// Below it, the other checks every integer call shares (ISA by name, packed panels).
#pragma once

#include "bind/common.h"

#include <cmath>
#include <string>

#include "cpu/int_gemm.h"

namespace zsq::bind {

inline at::ScalarType kind_dtype(zsq::cpu::OutKind k) {
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

// The kernels' element kind of `dtype`; `what` names the argument in the error.
inline zsq::cpu::OutKind dtype_kind(const char* what, at::ScalarType dtype) {
  using zsq::cpu::OutKind;
  switch (dtype) {
    case at::kInt: return OutKind::kInt32;
    case at::kFloat: return OutKind::kFloat32;
    case at::kHalf: return OutKind::kFloat16;
    case at::kBFloat16: return OutKind::kBFloat16;
    case at::kChar: return OutKind::kInt8;
    case at::kByte: return OutKind::kUint8;
    default: break;
  }
  TORCH_CHECK(false, "IntEpilogue: ", what, " must be torch.int32, float32, float16, bfloat16, int8 or uint8, got ",
              dtype);
  return OutKind::kInt32;
}

class BoundIntEpilogue {
 public:
  // The int32 accumulator output: no dequantisation.
  BoundIntEpilogue() = default;

  BoundIntEpilogue(at::ScalarType out_dtype, int64_t act_zero_point, std::optional<at::Tensor> weight_zero_point,
                   std::optional<at::Tensor> weight_scale, std::optional<at::Tensor> act_scale,
                   std::optional<at::Tensor> bias, std::optional<at::ScalarType> residual_dtype,
                   double residual_scale, int64_t residual_zero_point, const std::string& activation,
                   double out_scale, int64_t out_zero_point, int64_t quant_min, int64_t quant_max,
                   std::optional<at::ScalarType> codes_dtype, double codes_inv_scale, int64_t codes_zero_point,
                   int64_t codes_min, int64_t codes_max) {
    using zsq::cpu::OutKind;
    constexpr const char* fn = "IntEpilogue";
    ep_.out = dtype_kind("out_dtype", out_dtype);
    constexpr int64_t i32_lo = -(int64_t{1} << 31), i32_hi = (int64_t{1} << 31) - 1;
    TORCH_CHECK(act_zero_point >= i32_lo && act_zero_point <= i32_hi, fn,
                ": act_zero_point must fit int32, got ", act_zero_point);
    ep_.act_zero_point = static_cast<int32_t>(act_zero_point);
    if (weight_zero_point.has_value()) {
      wzp_ = vector_arg("weight_zero_point", *weight_zero_point, at::kInt);
      ep_.weight_zero_point = wzp_.const_data_ptr<int32_t>();
    }
    TORCH_CHECK(activation == "none" || activation == "relu" || activation == "relu6", fn,
                ": activation must be 'none', 'relu' or 'relu6', got '", activation, "'");
    if (ep_.out == OutKind::kInt32) {
      TORCH_CHECK(!weight_scale.has_value() && !act_scale.has_value() && !bias.has_value() &&
                      !residual_dtype.has_value() && activation == "none",
                  fn, ": an int32 output keeps the accumulator: only zero points are allowed, got "
                  "scales, bias, residual or an activation");
    } else {
      TORCH_CHECK(weight_scale.has_value() && act_scale.has_value(), fn, ": out_dtype=", out_dtype,
                  " needs weight_scale and act_scale");
      wscale_ = vector_arg("weight_scale", *weight_scale, at::kFloat);
      ep_.weight_scale = wscale_.const_data_ptr<float>();
      ascale_ = vector_arg("act_scale", *act_scale, at::kFloat);
      ep_.act_scale = ascale_.const_data_ptr<float>();
      if (bias.has_value()) {
        bias_ = vector_arg("bias", *bias, at::kFloat);
        ep_.bias = bias_.const_data_ptr<float>();
      }
      ep_.activation = activation == "relu" ? 1 : activation == "relu6" ? 2 : 0;
    }
    if (residual_dtype.has_value()) {
      const OutKind rk = dtype_kind("residual_dtype", *residual_dtype);
      TORCH_CHECK(rk != OutKind::kInt32, fn, ": residual_dtype must be a float or int8 / uint8 dtype, got int32");
      ep_.residual_kind = rk;
      residual_dtype_ = *residual_dtype;
      ep_.residual_scale = static_cast<float>(residual_scale);
      ep_.residual_zero_point = static_cast<int32_t>(residual_zero_point);
    }
    if (ep_.out == OutKind::kInt8 || ep_.out == OutKind::kUint8) {
      const int64_t lo = ep_.out == OutKind::kInt8 ? -128 : 0, hi = ep_.out == OutKind::kInt8 ? 127 : 255;
      TORCH_CHECK(quant_min >= lo && quant_max <= hi && quant_min < quant_max, fn, ": quant range [",
                  quant_min, ", ", quant_max, "] must be increasing and inside [", lo, ", ", hi, "]");
      TORCH_CHECK(out_scale > 0.0 && std::isfinite(out_scale), fn,
                  ": out_scale must be positive and finite, got ", out_scale);
      ep_.out_scale = static_cast<float>(out_scale);
      ep_.out_zero_point = static_cast<int32_t>(out_zero_point);
      ep_.quant_min = static_cast<int32_t>(quant_min);
      ep_.quant_max = static_cast<int32_t>(quant_max);
    }
    if (codes_dtype.has_value()) {
      TORCH_CHECK(*codes_dtype == at::kChar || *codes_dtype == at::kByte, fn,
                  ": codes_dtype must be torch.int8 or torch.uint8, got ", *codes_dtype);
      TORCH_CHECK(ep_.out == OutKind::kFloat32, fn, ": a codes output needs out_dtype=torch.float32");
      const int64_t lo = *codes_dtype == at::kChar ? -128 : 0, hi = *codes_dtype == at::kChar ? 127 : 255;
      TORCH_CHECK(codes_min >= lo && codes_max <= hi && codes_min < codes_max, fn, ": codes range [", codes_min,
                  ", ", codes_max, "] must be increasing and inside [", lo, ", ", hi, "]");
      TORCH_CHECK(codes_inv_scale > 0.0 && std::isfinite(codes_inv_scale), fn,
                  ": codes_inv_scale must be positive and finite, got ", codes_inv_scale);
      codes_ = true;
      ep_.codes_kind = dtype_kind("codes_dtype", *codes_dtype);
      ep_.codes_inv_scale = static_cast<float>(codes_inv_scale);
      ep_.codes_zero_point = static_cast<int32_t>(codes_zero_point);
      ep_.codes_min = static_cast<int32_t>(codes_min);
      ep_.codes_max = static_cast<int32_t>(codes_max);
    }
  }

  at::ScalarType out_dtype() const { return kind_dtype(ep_.out); }
  std::optional<at::ScalarType> residual_dtype() const { return residual_dtype_; }
  std::optional<at::ScalarType> codes_dtype() const {
    return codes_ ? std::optional<at::ScalarType>(kind_dtype(ep_.codes_kind)) : std::nullopt;
  }
  std::string activation() const { return ep_.activation == 1 ? "relu" : ep_.activation == 2 ? "relu6" : "none"; }

  // The bound tensors against an output of `n` channels and `m` rows (m < 0: any number of rows,
  // then act_scale must be per tensor) on `device`.
  void check_for(const char* fn, const at::Device& device, int64_t m, int64_t n) const {
    check_size(fn, device, "weight_zero_point", wzp_, n, true);
    check_size(fn, device, "weight_scale", wscale_, n, true);
    if (ascale_.defined()) {
      TORCH_CHECK(m >= 0 || ascale_.numel() == 1, fn, ": this call takes a per-tensor act_scale, got ",
                  ascale_.numel(), " elements");
      check_size(fn, device, "act_scale", ascale_, m, true);
    }
    check_size(fn, device, "bias", bias_, n, false);
  }

  // The kernels' epilogue for one [m, n] call with `residual` (of the bound residual_dtype);
  // `keep` holds the residual's contiguous copy while the kernel runs. The codes pointer is left
  // null: the caller that prepared a codes output sets it.
  zsq::cpu::IntEpilogue resolve(const char* fn, const at::Device& device, int64_t m, int64_t n,
                                const std::optional<at::Tensor>& residual, at::Tensor& keep) const {
    check_for(fn, device, m, n);
    zsq::cpu::IntEpilogue ep = ep_;
    ep.wzp_per_channel = wzp_.defined() && wzp_.numel() == n && n != 1;
    ep.wscale_per_channel = wscale_.defined() && wscale_.numel() == n && n != 1;
    ep.ascale_per_row = ascale_.defined() && ascale_.numel() == m && m != 1;
    if (residual.has_value()) {
      TORCH_CHECK(residual_dtype_.has_value(), fn, ": a residual was passed but this call was bound / prepared "
                  "without a residual (give IntEpilogue a residual_dtype)");
      const at::Tensor& r = *residual;
      TORCH_CHECK(r.device() == device, fn, ": epilogue residual must be on ", device,
                  " (the operands' device), got ", r.device());
      TORCH_CHECK(r.scalar_type() == *residual_dtype_ && r.numel() == m * n, fn, ": residual must be ",
                  *residual_dtype_, " with ", m, " x ", n, " elements (the output's shape), got ", r.scalar_type(),
                  " ", r.sizes());
      keep = r.contiguous();
      ep.residual = keep.const_data_ptr();
    } else {
      TORCH_CHECK(!residual_dtype_.has_value(), fn, ": the epilogue was bound (prepared) with a residual; pass it");
    }
    return ep;
  }

 private:
  static at::Tensor vector_arg(const char* name, const at::Tensor& t, at::ScalarType dtype) {
    TORCH_CHECK(t.scalar_type() == dtype, "IntEpilogue: ", name, " must be ", dtype, ", got ", t.scalar_type());
    TORCH_CHECK(t.numel() >= 1, "IntEpilogue: ", name, " must not be empty");
    return t.reshape({-1}).contiguous();
  }

  static void check_size(const char* fn, const at::Device& device, const char* name, const at::Tensor& t,
                         int64_t per, bool allow_one) {
    if (!t.defined()) return;
    TORCH_CHECK(t.device() == device, fn, ": epilogue ", name, " must be on ", device,
                " (the operands' device), got ", t.device());
    TORCH_CHECK(t.numel() == per || (allow_one && t.numel() == 1), fn, ": epilogue ", name, " must have ",
                per, allow_one ? " elements or 1" : " elements", ", got ", t.numel());
  }

  zsq::cpu::IntEpilogue ep_;  // its pointers point into the tensors below
  at::Tensor wzp_, wscale_, ascale_, bias_;
  std::optional<at::ScalarType> residual_dtype_;
  bool codes_ = false;
};

// ---- checks every integer call shares (int_gemm.cpp, int_conv.cpp, int_prepared.cpp)

inline zsq::cpu::IntIsa check_int_isa(const char* fn, const std::string& isa) {
  using zsq::cpu::IntIsa;
  const IntIsa v = isa == "auto" ? IntIsa::kAuto : isa == "scalar" ? IntIsa::kScalar
                   : isa == "avx2" ? IntIsa::kAvx2 : isa == "avx512_vnni" ? IntIsa::kAvx512Vnni : IntIsa::kAuto;
  TORCH_CHECK(isa == "auto" || v != IntIsa::kAuto, fn,
              ": isa must be 'auto', 'scalar', 'avx2' or 'avx512_vnni', got '", isa, "'");
  TORCH_CHECK(zsq::cpu::int_isa_supported(v), fn, ": isa='", isa,
              "' is not supported by this CPU; see int_isas_cpu()");
  return v;
}

// panels as returned by int_pack_weight_cpu for `groups` groups of n_g channels and length k
inline void check_panels(const char* fn, const at::Tensor& panels, const at::Tensor& colsum, int64_t groups,
                         int64_t n_g, int64_t k) {
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

// The kernels' epilogue of a one-shot (not prepared) call; a codes output needs a prepared call.
inline zsq::cpu::IntEpilogue raw_epilogue(const char* fn, const BoundIntEpilogue& epilogue,
                                          const at::Device& device, int64_t m, int64_t n,
                                          const std::optional<at::Tensor>& residual, at::Tensor& keep) {
  TORCH_CHECK(!epilogue.codes_dtype().has_value(), fn,
              ": an epilogue with a codes output runs only in a prepared call (IntPreparedCpu)");
  return epilogue.resolve(fn, device, m, n, residual, keep);
}

}  // namespace zsq::bind
