// The Python module zsq_engine._C: one bind_<family> call per op family. The functions, their
// argument checks and docstrings live in csrc/bind/<family>.cpp; the kernels in csrc/cpu/ and
// csrc/cuda/ are torch-free.
//
// The csrc/bind/ sources are compiled here, as ONE translation unit (setup.py does not compile
// them on their own): torch's headers are most of each file's compile time, so one unit parses
// them once instead of once per family.
#include "bind/common.h"

#include "bind/adaround.cpp"
#include "bind/bn_stats.cpp"
#include "bind/common.cpp"
#include "bind/fake_quant.cpp"
#include "bind/info.cpp"
#include "bind/int_conv.cpp"
#include "bind/int4_pack.cpp"
#include "bind/int_epilogue.cpp"
#include "bind/int_gemm.cpp"
#include "bind/int_prepared.cpp"
#include "bind/qdrop_mix.cpp"
#include "bind/scale_search.cpp"
#include "bind/self_attention.cpp"

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
  zsq::bind::bind_int_epilogue(m);
  zsq::bind::bind_int_gemm(m);
  zsq::bind::bind_int_conv(m);
  zsq::bind::bind_int_prepared(m);
}
