// Binding of the BN-statistics loss kernels (csrc/cpu/bn_stats.cpp).
#include "bind/common.h"

#include "cpu/bn_stats.h"

namespace zsq::bind {
namespace {

struct BnCpuInputs {
  std::vector<at::Tensor> data;  // fp32 contiguous copies/views kept alive for the kernel
  std::vector<zsq::cpu::BnLayer> layers;
  int64_t total_groups = 0;
};

BnCpuInputs bn_prepare(const char* fn, const std::vector<at::Tensor>& activations, bool per_image) {
  TORCH_CHECK(!activations.empty(), fn, ": activations must be a non-empty list of tensors");
  BnCpuInputs in;
  for (size_t i = 0; i < activations.size(); ++i) {
    const at::Tensor& a = activations[i];
    TORCH_CHECK(a.device().is_cpu(), fn, ": activations[", i, "] must be a CPU tensor, got device ",
                a.device());
    TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kHalf ||
                    a.scalar_type() == at::kBFloat16,
                fn, ": activations[", i, "] must be float32, float16 or bfloat16, got ", a.scalar_type());
    TORCH_CHECK(a.dim() == 2 || a.dim() == 4, fn, ": activations[", i,
                "] must be [N, C, H, W] or [N, C], got ", a.dim(), " dims");
    TORCH_CHECK(a.numel() > 0, fn, ": activations[", i, "] must not be empty");
    // fp16/bf16 are widened once here; the kernel reads fp32 rows.
    in.data.push_back(a.to(at::kFloat).contiguous());
    const int64_t s = a.dim() == 4 ? a.size(2) * a.size(3) : 1;
    in.layers.push_back({in.data.back().const_data_ptr<float>(), nullptr, a.size(0), a.size(1), s});
    in.total_groups += per_image ? a.size(0) * a.size(1) : a.size(1);
  }
  return in;
}

zsq::cpu::BnLossParams bn_params(bool per_image, bool use_std, bool unbiased, double std_eps,
                                 bool eps_in_std, int64_t normalize, bool layer_mean) {
  TORCH_CHECK(normalize >= 0 && normalize <= 2,
              "bn_stats: normalize must be 0 (channels), 1 (batch) or 2 (mean), got ", normalize);
  return {per_image, use_std, unbiased, eps_in_std, layer_mean, static_cast<int>(normalize), std_eps};
}

at::Tensor bn_concat_params(const char* fn, const char* name, const std::vector<at::Tensor>& params,
                            const BnCpuInputs& in) {
  TORCH_CHECK(params.size() == in.layers.size(), fn, ": ", name, " must have one tensor per layer (",
              in.layers.size(), "), got ", params.size());
  std::vector<at::Tensor> flat;
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(params[i].device().is_cpu(), fn, ": ", name, "[", i, "] must be a CPU tensor");
    TORCH_CHECK(params[i].numel() == in.layers[i].c, fn, ": ", name, "[", i, "] must have ",
                in.layers[i].c, " elements (channels of activations[", i, "]), got ", params[i].numel());
    flat.push_back(params[i].reshape({-1}).to(at::kFloat));
  }
  return at::cat(flat).contiguous();
}

std::tuple<at::Tensor, at::Tensor> bn_stats_forward_cpu(
    const std::vector<at::Tensor>& activations, const std::vector<at::Tensor>& running_means,
    const std::vector<at::Tensor>& running_vars, bool per_image, bool use_std, bool unbiased,
    double std_eps, bool eps_in_std, int64_t normalize, bool layer_mean) {
  constexpr const char* fn = "bn_stats_forward_cpu";
  const auto params = bn_params(per_image, use_std, unbiased, std_eps, eps_in_std, normalize, layer_mean);
  BnCpuInputs in = bn_prepare(fn, activations, per_image);
  const at::Tensor rmean = bn_concat_params(fn, "running_means", running_means, in);
  const at::Tensor rvar = bn_concat_params(fn, "running_vars", running_vars, in);
  at::Tensor saved = at::empty({3, in.total_groups}, rmean.options());
  const double loss = zsq::cpu::bn_stats_forward(
      in.layers.data(), static_cast<int64_t>(in.layers.size()), rmean.const_data_ptr<float>(),
      rvar.const_data_ptr<float>(), params, saved.mutable_data_ptr<float>(), in.total_groups,
      at::get_num_threads());
  return {at::scalar_tensor(loss, rmean.options()), saved};
}

std::vector<at::Tensor> bn_stats_backward_cpu(const at::Tensor& grad_out,
                                              const std::vector<at::Tensor>& activations,
                                              const at::Tensor& saved, bool per_image, bool use_std,
                                              bool unbiased, double std_eps, bool eps_in_std,
                                              int64_t normalize, bool layer_mean) {
  constexpr const char* fn = "bn_stats_backward_cpu";
  const auto params = bn_params(per_image, use_std, unbiased, std_eps, eps_in_std, normalize, layer_mean);
  TORCH_CHECK(grad_out.numel() == 1, fn, ": grad_out must have one element, got ", grad_out.numel());
  BnCpuInputs in = bn_prepare(fn, activations, per_image);
  TORCH_CHECK(saved.device().is_cpu() && saved.scalar_type() == at::kFloat && saved.dim() == 2 &&
                  saved.size(0) == 3 && saved.size(1) == in.total_groups,
              fn, ": saved must be a float32 CPU tensor [3, ", in.total_groups, "], got ",
              saved.scalar_type(), " ", saved.sizes());
  const at::Tensor saved_c = saved.contiguous();
  std::vector<at::Tensor> grads;
  for (auto& layer : in.layers) {
    grads.push_back(at::empty({layer.n, layer.c, layer.s}, saved_c.options()));
    layer.grad = grads.back().mutable_data_ptr<float>();
  }
  zsq::cpu::bn_stats_backward(in.layers.data(), static_cast<int64_t>(in.layers.size()),
                              saved_c.const_data_ptr<float>(), in.total_groups,
                              grad_out.to(at::kFloat).item<float>(), params, at::get_num_threads());
  for (size_t i = 0; i < grads.size(); ++i) {
    grads[i] = grads[i].reshape(activations[i].sizes()).to(activations[i].scalar_type());
  }
  return grads;
}

}  // namespace

void bind_bn_stats(pybind11::module_& m) {
  m.def("bn_stats_forward_cpu", &bn_stats_forward_cpu, pybind11::arg("activations"),
        pybind11::arg("running_means"), pybind11::arg("running_vars"), pybind11::arg("per_image"),
        pybind11::arg("use_std"), pybind11::arg("unbiased"), pybind11::arg("std_eps"),
        pybind11::arg("eps_in_std"), pybind11::arg("normalize"), pybind11::arg("layer_mean"),
        "Fused BN-statistics loss of all layers (see zsq_engine/ops/bn_stats/reference.py).\n"
        "activations: list of CPU [N, C, H, W] / [N, C] fp32/fp16/bf16; running stats: lists of [C].\n"
        "normalize: 0 channels, 1 batch, 2 mean. Returns (loss fp32 0-dim, saved fp32 [3, G]).");
  m.def("bn_stats_backward_cpu", &bn_stats_backward_cpu, pybind11::arg("grad_out"),
        pybind11::arg("activations"), pybind11::arg("saved"), pybind11::arg("per_image"),
        pybind11::arg("use_std"), pybind11::arg("unbiased"), pybind11::arg("std_eps"),
        pybind11::arg("eps_in_std"), pybind11::arg("normalize"), pybind11::arg("layer_mean"),
        "Gradients of bn_stats_forward_cpu's loss w.r.t. each activation (its dtype and shape).");
}

}  // namespace zsq::bind
