// The Python module zsq_engine._C: one bind_<family> call per op family. The functions, their
// argument checks and docstrings live in csrc/bind/<family>.cpp; the kernels in csrc/cpu/ and
// csrc/cuda/ are torch-free.
#include "bind/common.h"
#include "bind/int_prepared.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() =
      "zsq_engine native extension: int4 packing, fused fake-quant / AdaRound / scale-search / "
      "QDrop / BN-loss / attention CPU kernels, integer GEMM / conv kernels and build "
      "introspection";
  zsq::bind::bind_info(m);
  zsq::bind::bind_int4_pack(m);
  zsq::bind::bind_fake_quant(m);
  zsq::bind::bind_qdrop_mix(m);
  zsq::bind::bind_adaround(m);
  zsq::bind::bind_scale_search(m);
  zsq::bind::bind_bn_stats(m);
  zsq::bind::bind_self_attention(m);
  zsq::bind::bind_int_gemm(m);
  bind_int_prepared(m);
}
