// QDrop input mixing: one pass, the random number recomputed per element from its index.
#include "cpu/qdrop_mix.h"

#include <cstdint>

#include "cpu/fake_quant_common.h"  // last: turns off fp contraction

namespace zsq {
namespace cpu {
namespace {

using detail::DropConst;
using detail::drop_counter;
using detail::make_drop_const;
using detail::plan_threads;
using detail::split_range;
using detail::uniform01;

// Element type only matters for its width: the select moves bit patterns.
template <typename Bits>
ZSQ_MULTIVERSION void mix_range(const Bits* x_q, const Bits* x_fp, Bits* out, int64_t begin,
                                int64_t end, DropConst d) {
  for (int64_t i = begin; i < end; ++i) {
    const bool keep = uniform01(d.key, drop_counter(d, i)) < d.p;
    out[i] = keep ? x_q[i] : x_fp[i];
  }
}

template <typename Bits>
void mix_all(const void* x_q, const void* x_fp, void* out, int64_t numel, const DropConst& d,
             int num_threads) {
  const Bits* q = static_cast<const Bits*>(x_q);
  const Bits* f = static_cast<const Bits*>(x_fp);
  Bits* o = static_cast<Bits*>(out);
  const int threads = plan_threads(numel, num_threads);
  if (threads <= 1) {
    mix_range(q, f, o, 0, numel, d);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int t = 0; t < threads; ++t) {
    int64_t begin = 0, end = 0;
    split_range(numel, threads, t, &begin, &end);
    mix_range(q, f, o, begin, end, d);
  }
}

}  // namespace

void qdrop_mix(ElemType type, const void* x_q, const void* x_fp, void* out, int64_t numel,
               const QDropParams& qdrop, int num_threads) {
  const DropConst d = make_drop_const(&qdrop);
  if (type == ElemType::kFloat32) {
    mix_all<uint32_t>(x_q, x_fp, out, numel, d, num_threads);
  } else {
    mix_all<uint16_t>(x_q, x_fp, out, numel, d, num_threads);
  }
}

}  // namespace cpu
}  // namespace zsq
