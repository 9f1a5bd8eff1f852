"""Triton kernels (``zsq_engine.kernels``) of the ops not yet in a family folder (int_mm, qgemm /
qconv2d_nhwc), registered under the 'triton' backend. The op families under
``zsq_engine/ops/<family>/`` register their own in ``<family>/triton.py``.

Importing this module must not fail without Triton: kernels are registered only when Triton
and the kernel modules import. The launchers take exactly the arguments of the reference
primitives.
"""
from __future__ import annotations

import torch

from ..dispatch import register


def _register_int_mm() -> None:
    try:
        from zsq_engine.kernels import int_gemm
    except ImportError:  # pragma: no cover - Triton missing
        return
    register("int_mm", "triton")(int_gemm.int_mm)


_register_int_mm()


def _register_quantized() -> None:
    """qgemm / qconv2d_nhwc: the int GEMM launchers by weight/activation format; grouped convs that
    are not depthwise and per-row conv activation scales go to the reference (no kernel yet)."""
    try:
        from zsq_engine.kernels import int_conv, int_gemm
    except Exception:  # pragma: no cover - Triton missing
        return
    from ..reference.quantized import qconv2d_nhwc as _qconv2d_nhwc_reference

    @register("qgemm", "triton")
    def _qgemm(a, w, epilogue, w_packed, a_packed, a_signed, k):
        if a_packed:
            if not w_packed:
                raise NotImplementedError("packed int4 activations need packed int4 weights (W4A4)")
            return int_gemm.w4a4_gemm(a, w, k, epilogue, a_signed=a_signed)
        if w_packed:
            return int_gemm.w4a8_gemm(a, w, epilogue)
        return int_gemm.int8_gemm(a, w, epilogue)

    @register("qconv2d_nhwc", "triton")
    def _qconv(x, w, stride, padding, dilation, groups, epilogue, pad_value):
        c, o = x.shape[3], w.shape[0]
        per_row = epilogue is not None and isinstance(epilogue.act_scale, torch.Tensor) and epilogue.act_scale.numel() > 1
        if (groups != 1 and not (groups == c == o)) or per_row:
            return _qconv2d_nhwc_reference(x, w, stride, padding, dilation, groups, epilogue, pad_value)
        return int_conv.int8_conv2d_nhwc(x, w, stride, padding, dilation, groups, epilogue, pad_value)


_register_quantized()
