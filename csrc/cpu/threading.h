// The OpenMP thread count every CPU kernel starts from (torch-free).
//
// The binding passes at::get_num_threads() down, so a kernel follows torch.set_num_threads();
// 0 or a negative count means "whatever OpenMP would use". Without OpenMP everything runs on
// the calling thread. Kept in one place so that all kernels agree on that rule.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace zsq {
namespace cpu {

inline int resolve_threads(int num_threads) {
#ifdef _OPENMP
  return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  (void)num_threads;
  return 1;
#endif
}

}  // namespace cpu
}  // namespace zsq
