// Runtime CPU feature detection (torch-free). Reported to Python by cpu_capabilities() so that
// dispatch and benchmarks can say which integer instructions this machine has.
#pragma once

namespace zsq {
namespace cpu {

struct CpuFeatures {
  bool avx2 = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512_vnni = false;  // VPDPBUSD on 512-bit vectors (Cascade Lake and later)
  bool avx_vnni = false;     // VEX-encoded VNNI on 256-bit vectors (Alder Lake, Sapphire Rapids)
  bool openmp = false;       // the extension was compiled with OpenMP
  int max_threads = 1;       // omp_get_max_threads(), or 1 without OpenMP
};

CpuFeatures query_cpu_features();

}  // namespace cpu
}  // namespace zsq
