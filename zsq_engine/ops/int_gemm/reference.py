"""Reference integer GEMM (the oracle of ``qgemm`` / ``int_mm``'s kernels) and the float64
reference of the integer epilogue (semantics and error budget in
:mod:`zsq_engine.opspec.epilogue`): the exact zero-point-corrected product, then dequantisation,
bias, residual, activation and the output cast or requantisation, all in fp64. Products of 8-bit
integers summed in fp64 are exact (every partial sum stays far below 2^53), so computing in fp64
and casting to int32 is an exact oracle on any device."""
from __future__ import annotations

from typing import Optional

import torch

from ...opspec.dtypes import FLOAT_OUT_DTYPES, QUANT_OUT_DTYPES
from ...opspec.epilogue import Epilogue, ScalarOrTensor
from ...opspec.int4 import unpack_int4


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a.double(), b.double()).to(torch.int32)


def qgemm(a, w, epilogue, w_packed, a_packed, a_signed, k):
    if a_packed:
        a = unpack_int4(a, k, a_signed)
    if w_packed:
        w = unpack_int4(w, k, True)
    ep = epilogue
    product = zero_point_product_reference(a, w, 0 if ep is None else ep.act_zero_point,
                                           None if ep is None else ep.weight_zero_point)
    return apply_reference(product, ep)


def _as_f64(v: ScalarOrTensor, device) -> torch.Tensor:
    """A scale as the kernels see it (fp32), then widened to fp64 exactly."""
    t = v if isinstance(v, torch.Tensor) else torch.tensor(float(v))
    return t.to(device=device, dtype=torch.float32).to(torch.float64).reshape(-1)


def zero_point_product_reference(a: torch.Tensor, w: torch.Tensor, act_zero_point: int = 0,
                                 weight_zero_point=None) -> torch.Tensor:
    """Exact ``sum_k (a - za)(w - zw)`` in fp64: ``a`` [M, K] int8/uint8, ``w`` [N, K] int8."""
    wd = w.double()
    if weight_zero_point is not None:
        zw = weight_zero_point if isinstance(weight_zero_point, torch.Tensor) else torch.tensor(weight_zero_point)
        wd = wd - zw.to(device=w.device, dtype=torch.float64).reshape(-1, 1)
    return (a.double() - act_zero_point) @ wd.t()


def dequant_reference(product: torch.Tensor, epilogue: Epilogue) -> torch.Tensor:
    """Steps 2-4 in fp64 on the exact zero-point-corrected product [M, N] (fp64 or integer).

    Returns the fp64 value before the output cast / requantisation (the product itself for
    ``out_dtype=int32``)."""
    ep = epilogue.validate()
    v = product.double()
    if ep.integer_output:
        return v
    dev = v.device
    m, n = v.shape
    sa = _as_f64(ep.act_scale, dev)
    sw = _as_f64(ep.weight_scale, dev)
    v = v * (sa.reshape(-1, 1) if sa.numel() == m and m != 1 else sa) * sw.reshape(1, -1)
    if ep.bias is not None:
        v = v + ep.bias.to(dev, torch.float32).double().reshape(1, -1)
    if ep.residual is not None:
        r = ep.residual.reshape(m, n).double()
        if ep.residual.dtype in QUANT_OUT_DTYPES:
            r = (r - ep.residual_zero_point) * _as_f64(ep.residual_scale, dev)
        v = v + r
    if ep.activation == "relu":
        v = v.clamp_min(0.0)
    elif ep.activation == "relu6":
        v = v.clamp(0.0, 6.0)
    return v


def finish_reference(v: torch.Tensor, epilogue: Epilogue) -> torch.Tensor:
    """Step 5 in fp64: cast, or requantise with round-half-to-even and clamp."""
    ep = epilogue
    if ep.integer_output:
        return v.to(torch.int32)
    if ep.out_dtype in FLOAT_OUT_DTYPES:
        return v.to(ep.out_dtype)
    qmin, qmax = ep.quant_range()
    q = torch.round(v / _as_f64(ep.out_scale, v.device)) + ep.out_zero_point
    return q.clamp(qmin, qmax).to(ep.out_dtype)


def apply_reference(product: torch.Tensor, epilogue: Optional[Epilogue]) -> torch.Tensor:
    """The whole epilogue on the exact product [M, N]; ``None`` means plain int32."""
    if epilogue is None:
        return product.to(torch.int32)
    return finish_reference(dequant_reference(product, epilogue), epilogue)
