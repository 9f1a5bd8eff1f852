"""The fake-quant op family: ``fake_quant`` (straight-through), ``lsq_fake_quant`` (learnable
scale / zero point) and ``qdrop_fake_quant`` (QDrop fused in).

This file: the public functions (argument checks, then the op). ``library.py``: the
torch.library ops and their autograd; ``reference.py``: the pure-PyTorch primitives (the
oracle); ``cpu.py`` / ``triton.py``: the primitives' kernels per backend. See
docs/architecture.md for how the pieces fit.

Shapes: ``x`` any shape; per-tensor qparams have one element (axis=None); per-channel qparams
have shape ``[x.shape[axis]]``. ``x`` is fp32, fp16 or bf16 (not fp64: the kernels compute in
fp32, so cast first) and the result has its dtype; ``scale`` / ``zero_point`` tensors may be fp64
(they are used in fp32). No op reads a CUDA tensor's values on the host (see
:mod:`zsq_engine.opspec.checks`).
"""
from __future__ import annotations

from typing import Optional

import torch

from ...opspec import checks
from ..dispatch import add_backend_modules
from . import library

add_backend_modules(f"{__name__}.cpu", f"{__name__}.triton")

__all__ = ["fake_quant", "lsq_fake_quant", "qdrop_fake_quant", "check_qdrop_args"]


def _prepare(x, scale, zero_point, quant_min, quant_max, axis):
    checks.check_float_tensor("x", x)
    checks.check_quant_range(quant_min, quant_max)
    axis = checks.normalize_axis(axis, x.dim())
    scale = checks.as_param_tensor("scale", scale, x, torch.float32)
    zero_point = checks.as_param_tensor("zero_point", zero_point, x, torch.float32)
    checks.check_qparams(x, scale, zero_point, axis)
    return scale, zero_point, axis


def check_qdrop_args(p, seed, offset) -> None:
    """QDrop's probability and counter arguments (shared with ``qdrop_mix``)."""
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    for name, v in (("seed", seed), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2 ** 63:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")


def fake_quant(x: torch.Tensor, scale, zero_point, quant_min: int, quant_max: int,
               axis: Optional[int] = None) -> torch.Tensor:
    """Fake-quantize with a straight-through gradient.

    ``y = (clamp(round(x / scale) + zero_point, quant_min, quant_max) - zero_point) * scale``
    (round half to even, ``x * (1/scale)`` in fp32 exactly as PyTorch), ``dx = dy`` where the
    unclamped value lies in ``[quant_min, quant_max]`` and 0 elsewhere. Identical to
    ``torch.fake_quantize_per_tensor_affine`` (axis=None) / ``per_channel_affine`` (axis=channel).
    ``zero_point`` is rounded to an integer but, unlike :func:`lsq_fake_quant`, not clamped.
    ``x``: fp32 / fp16 / bf16 (fp64 is refused with a TypeError: cast it first).
    """
    scale, zero_point, axis = _prepare(x, scale, zero_point, quant_min, quant_max, axis)
    return library.fake_quant(x, scale, zero_point, quant_min, quant_max, axis)


def lsq_fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int,
                   quant_max: int, axis: Optional[int] = None, grad_factor: float = 1.0) -> torch.Tensor:
    """Fake-quantize with learnable scale and zero point (LSQ / LSQ+ gradients).

    Forward as :func:`fake_quant` with the zero point rounded and clamped to the range.
    Gradients as ``torch._fake_quantize_learnable_per_tensor_affine`` / ``_per_channel_affine``
    (see :mod:`zsq_engine.ops.fake_quant.reference`), without host synchronisation. One
    deliberate difference: PyTorch's per-tensor backward rounds ``zero_point + x/scale`` instead
    of ``x/scale``, so at an exact rounding tie with an odd zero point its scale gradient does not
    match its own forward; here the scale gradient always uses the forward's rounding.
    ``grad_factor`` multiplies the scale and zero-point gradients (LSQ: 1/sqrt(numel * quant_max));
    it must be finite and >= 0 (ValueError otherwise).
    """
    scale, zero_point, axis = _prepare(x, scale, zero_point, quant_min, quant_max, axis)
    grad_factor = checks.check_scalar("grad_factor", grad_factor, nonnegative=True)
    return library.lsq_fake_quant(x, scale, zero_point, quant_min, quant_max, axis, grad_factor)


def qdrop_fake_quant(x: torch.Tensor, scale, zero_point, quant_min: int, quant_max: int,
                     axis: Optional[int] = None, p: float = 0.5, seed: int = 0, offset: int = 0,
                     learnable: bool = False, grad_factor: float = 1.0) -> torch.Tensor:
    """Activation fake-quant with QDrop fused in: ``qdrop_mix(fq(x), x, p, seed, offset)``.

    ``fq`` is :func:`fake_quant` (``learnable=False``) or :func:`lsq_fake_quant`
    (``learnable=True``, gradients to scale / zero point from the quantized elements only). The
    random choice is recomputed in the backward from (seed, element index), never stored.
    """
    scale, zero_point, axis = _prepare(x, scale, zero_point, quant_min, quant_max, axis)
    check_qdrop_args(p, seed, offset)
    grad_factor = checks.check_scalar("grad_factor", grad_factor, nonnegative=True)
    return library.qdrop_fake_quant(x, scale, zero_point, quant_min, quant_max, axis, float(p), seed, offset,
                                    bool(learnable), grad_factor)
