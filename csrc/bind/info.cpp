// Binding of the build and CPU introspection (build_info, cpu_capabilities).
#include <torch/version.h>

#include "bind/common.h"
#include "cpu/cpu_features.h"

namespace zsq::bind {
namespace {

#define ZSQ_STRINGIFY_(x) #x
#define ZSQ_STRINGIFY(x) ZSQ_STRINGIFY_(x)

std::string torch_version_built() {
#if defined(TORCH_VERSION_MAJOR) && defined(TORCH_VERSION_MINOR) && defined(TORCH_VERSION_PATCH)
  return ZSQ_STRINGIFY(TORCH_VERSION_MAJOR) "." ZSQ_STRINGIFY(TORCH_VERSION_MINOR) "." ZSQ_STRINGIFY(
      TORCH_VERSION_PATCH);
#else
  return "unknown";
#endif
}

std::string compiler_name() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " ZSQ_STRINGIFY(_MSC_VER);
#else
  return "unknown";
#endif
}

pybind11::dict cpu_capabilities() {
  const zsq::cpu::CpuFeatures f = zsq::cpu::query_cpu_features();
  pybind11::dict d;
  d["avx2"] = f.avx2;
  d["avx512f"] = f.avx512f;
  d["avx512bw"] = f.avx512bw;
  d["avx512_vnni"] = f.avx512_vnni;
  d["avx_vnni"] = f.avx_vnni;
  d["openmp"] = f.openmp;
  d["max_threads"] = f.max_threads;
  return d;
}

pybind11::dict build_info() {
  pybind11::dict d;
#ifdef ZSQ_WITH_CUDA
  d["with_cuda"] = true;
#else
  d["with_cuda"] = false;
#endif
  d["torch_version_built"] = torch_version_built();
  d["compiler"] = compiler_name();
  return d;
}

}  // namespace

void bind_info(pybind11::module_& m) {
  m.def("cpu_capabilities", &cpu_capabilities,
        "Dict of booleans avx2, avx512f, avx512bw, avx512_vnni, avx_vnni, openmp (compiled with "
        "OpenMP) and int max_threads (OpenMP threads available).");
  m.def("build_info", &build_info,
        "Dict: with_cuda (bool, CUDA kernels compiled in), torch_version_built (str), compiler "
        "(str).");
}

}  // namespace zsq::bind
