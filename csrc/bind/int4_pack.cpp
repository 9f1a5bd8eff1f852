// Binding of the int4 pack / unpack kernels (csrc/cpu/int4_pack.cpp, csrc/cuda/int4_pack.cu).
#include "bind/common.h"

#include "cpu/int4_pack.h"
#ifdef ZSQ_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "cuda/launchers.h"
#endif

namespace zsq::bind {
namespace {

// Shape of the packed tensor: the input's shape with the last dim K replaced by (K + 1) / 2.
std::vector<int64_t> packed_shape(const at::Tensor& x) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = (shape.back() + 1) / 2;
  return shape;
}

void check_pack_input(const char* fn, const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kChar || x.scalar_type() == at::kByte, fn,
              ": x must be int8 (signed int4 values in [-8, 7]) or uint8 (unsigned int4 values "
              "in [0, 15]), got dtype ",
              x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, fn,
              ": x must have at least 1 dimension (values are packed along the last dim K), got "
              "a 0-dim tensor");
}

[[noreturn]] void fail_out_of_range(const char* fn, const at::Tensor& x) {
  // Error path only: one extra pass to report the offending range.
  const bool is_signed = x.scalar_type() == at::kChar;
  const auto as_int = x.to(at::kInt);
  const int64_t lo = as_int.min().item<int64_t>();
  const int64_t hi = as_int.max().item<int64_t>();
  TORCH_CHECK(false, fn, ": x holds values outside the ",
              is_signed ? "signed int4 range [-8, 7] (x is int8)"
                        : "unsigned int4 range [0, 15] (x is uint8)",
              "; found min ", lo, " and max ", hi,
              ". Quantize/clamp to 4 bits before packing.");
  // TORCH_CHECK(false, ...) always throws.
  throw std::logic_error("unreachable");
}

void check_unpack_input(const char* fn, const at::Tensor& packed, int64_t k) {
  TORCH_CHECK(packed.scalar_type() == at::kByte, fn,
              ": packed must be uint8 (two int4 values per byte), got dtype ",
              packed.scalar_type());
  TORCH_CHECK(packed.dim() >= 1, fn,
              ": packed must have at least 1 dimension (last dim (k + 1) // 2), got a 0-dim "
              "tensor");
  const int64_t packed_k = packed.size(-1);
  TORCH_CHECK(k >= 0 && (k + 1) / 2 == packed_k, fn, ": k=", k,
              " does not fit packed with last dim ", packed_k,
              ": expected k with (k + 1) // 2 == ", packed_k, ", i.e. k in {",
              packed_k == 0 ? std::string("0")
                            : std::to_string(2 * packed_k - 1) + ", " + std::to_string(2 * packed_k),
              "}");
}

std::vector<int64_t> unpacked_shape(const at::Tensor& packed, int64_t k) {
  std::vector<int64_t> shape(packed.sizes().begin(), packed.sizes().end());
  shape.back() = k;
  return shape;
}

// ---------------------------------------------------------------------------------------------
// CPU

at::Tensor pack_int4_cpu(const at::Tensor& x) {
  constexpr const char* fn = "pack_int4_cpu";
  check_pack_input(fn, x);
  TORCH_CHECK(x.device().is_cpu(), fn, ": x must be a CPU tensor, got device ", x.device(),
              " (use pack_int4_cuda for CUDA tensors)");
  const at::Tensor xc = x.contiguous();
  const int64_t k = xc.size(-1);
  at::Tensor out = at::empty(packed_shape(xc), xc.options().dtype(at::kByte));
  if (xc.numel() == 0) return out;
  const int64_t rows = xc.numel() / k;
  const int threads = at::get_num_threads();
  bool in_range;
  if (xc.scalar_type() == at::kChar) {
    in_range = zsq::cpu::pack_int4_signed(xc.const_data_ptr<int8_t>(), out.mutable_data_ptr<uint8_t>(),
                                          rows, k, threads);
  } else {
    in_range = zsq::cpu::pack_int4_unsigned(xc.const_data_ptr<uint8_t>(),
                                            out.mutable_data_ptr<uint8_t>(), rows, k, threads);
  }
  if (!in_range) fail_out_of_range(fn, xc);
  return out;
}

at::Tensor unpack_int4_cpu(const at::Tensor& packed, int64_t k, bool is_signed) {
  constexpr const char* fn = "unpack_int4_cpu";
  check_unpack_input(fn, packed, k);
  TORCH_CHECK(packed.device().is_cpu(), fn, ": packed must be a CPU tensor, got device ",
              packed.device(), " (use unpack_int4_cuda for CUDA tensors)");
  const at::Tensor pc = packed.contiguous();
  at::Tensor out =
      at::empty(unpacked_shape(pc, k), pc.options().dtype(is_signed ? at::kChar : at::kByte));
  if (out.numel() == 0) return out;
  const int64_t rows = out.numel() / k;
  const int threads = at::get_num_threads();
  if (is_signed) {
    zsq::cpu::unpack_int4_signed(pc.const_data_ptr<uint8_t>(), out.mutable_data_ptr<int8_t>(), rows,
                                 k, threads);
  } else {
    zsq::cpu::unpack_int4_unsigned(pc.const_data_ptr<uint8_t>(), out.mutable_data_ptr<uint8_t>(),
                                   rows, k, threads);
  }
  return out;
}

#ifdef ZSQ_WITH_CUDA

// Synchronises once (reads the range flag back) so that bad input raises like on the CPU.
// Packing is an offline weight-conversion step, never on a training path.
at::Tensor pack_int4_cuda(const at::Tensor& x) {
  constexpr const char* fn = "pack_int4_cuda";
  check_pack_input(fn, x);
  TORCH_CHECK(x.is_cuda(), fn, ": x must be a CUDA tensor, got device ", x.device(),
              " (use pack_int4_cpu for CPU tensors)");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor xc = x.contiguous();
  const int64_t k = xc.size(-1);
  at::Tensor out = at::empty(packed_shape(xc), xc.options().dtype(at::kByte));
  if (xc.numel() == 0) return out;
  const int64_t rows = xc.numel() / k;
  at::Tensor flag = at::zeros({1}, xc.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  check_launch(fn, zsq_pack_int4_cuda_launch(static_cast<const uint8_t*>(xc.const_data_ptr()),
                                             out.mutable_data_ptr<uint8_t>(), rows, k,
                                             xc.scalar_type() == at::kChar ? 1 : 0,
                                             flag.mutable_data_ptr<int>(), stream));
  if (flag.item<int>() != 0) fail_out_of_range(fn, xc);
  return out;
}

at::Tensor unpack_int4_cuda(const at::Tensor& packed, int64_t k, bool is_signed) {
  constexpr const char* fn = "unpack_int4_cuda";
  check_unpack_input(fn, packed, k);
  TORCH_CHECK(packed.is_cuda(), fn, ": packed must be a CUDA tensor, got device ",
              packed.device(), " (use unpack_int4_cpu for CPU tensors)");
  const c10::cuda::CUDAGuard device_guard(packed.device());
  const at::Tensor pc = packed.contiguous();
  at::Tensor out =
      at::empty(unpacked_shape(pc, k), pc.options().dtype(is_signed ? at::kChar : at::kByte));
  if (out.numel() == 0) return out;
  const int64_t rows = out.numel() / k;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(packed.device().index()).stream();
  check_launch(fn, zsq_unpack_int4_cuda_launch(pc.const_data_ptr<uint8_t>(),
                                               static_cast<uint8_t*>(out.mutable_data_ptr()), rows,
                                               k, is_signed ? 1 : 0, stream));
  return out;
}

#endif  // ZSQ_WITH_CUDA

}  // namespace

void bind_int4_pack(pybind11::module_& m) {
  m.def("pack_int4_cpu", &pack_int4_cpu, pybind11::arg("x"),
        "Pack int4 values along the last dim.\n\n"
        "x: int8 tensor with values in [-8, 7] (signed) or uint8 in [0, 15] (unsigned), any shape\n"
        "[..., K] on the CPU. Returns uint8 [..., (K + 1) // 2]: element 2i -> low nibble of byte\n"
        "i, element 2i+1 -> high nibble; signed values as two's-complement nibbles; odd K padded\n"
        "with a zero nibble. Raises RuntimeError on out-of-range values or a wrong dtype.");
  m.def("unpack_int4_cpu", &unpack_int4_cpu, pybind11::arg("packed"), pybind11::arg("k"),
        pybind11::arg("is_signed"),
        "Inverse of pack_int4_cpu. packed: uint8 [..., (k + 1) // 2] on the CPU. Returns int8\n"
        "(sign-extended) [..., k] when is_signed, else uint8 [..., k] with values in [0, 15].");
#ifdef ZSQ_WITH_CUDA
  m.def("pack_int4_cuda", &pack_int4_cuda, pybind11::arg("x"),
        "pack_int4_cpu for CUDA tensors (same layout). Synchronises once to report out-of-range "
        "values.");
  m.def("unpack_int4_cuda", &unpack_int4_cuda, pybind11::arg("packed"), pybind11::arg("k"),
        pybind11::arg("is_signed"), "unpack_int4_cpu for CUDA tensors (same layout).");
#endif
}

}  // namespace zsq::bind
