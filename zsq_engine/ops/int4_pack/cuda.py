"""int4 packing on the CUDA kernels of the extension (``_C.pack_int4_cuda`` /
``_C.unpack_int4_cuda``, csrc/cuda/int4_pack.cu); nothing without a CUDA build."""
from __future__ import annotations

from zsq_engine._ext import get_extension

from ..dispatch import register

_C = get_extension()

if _C is not None and _C.build_info()["with_cuda"]:
    register("pack_int4", "cuda", cuda_preference=("cuda",))(_C.pack_int4_cuda)

    @register("unpack_int4", "cuda", cuda_preference=("cuda",))
    def _unpack_int4(packed, k, signed):
        return _C.unpack_int4_cuda(packed, k, signed)
