"""Public fake-quantization ops: validation, then dispatch to the best backend.

Shapes: ``x`` any shape; per-tensor qparams have one element (axis=None); per-channel qparams
have shape ``[x.shape[axis]]``. All ops accept fp32, fp16 and bf16 ``x`` (not fp64: the kernels
compute in fp32, so cast first) and return ``x``'s dtype; ``scale`` / ``zero_point`` tensors may
be fp64 (they are used in fp32). No op reads a CUDA tensor's values on the host (see
:mod:`.checks`): NaN / non-positive scales and NaN zero points are a ValueError for Python
numbers and for CPU tensors, and propagate into NaN outputs for CUDA tensors (unless
``ZSQ_CHECK_VALUES=1``), as a NaN in ``x`` does.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..opspec import checks
from . import library
from .dispatch import dispatch, register
from .reference import adaround as _ref_adaround
from .reference import qdrop as _ref_qdrop
from .reference import scale_search as _ref_search

register("qdrop_mix", "reference")(_ref_qdrop.qdrop_mix)


def _prepare(x, scale, zero_point, quant_min, quant_max, axis):
    checks.check_float_tensor("x", x)
    checks.check_quant_range(quant_min, quant_max)
    axis = checks.normalize_axis(axis, x.dim())
    scale = checks.as_param_tensor("scale", scale, x, torch.float32)
    zero_point = checks.as_param_tensor("zero_point", zero_point, x, torch.float32)
    checks.check_qparams(x, scale, zero_point, axis)
    return scale, zero_point, axis


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
    (see :mod:`zsq_engine.ops.reference.fake_quant`), without host synchronisation. One
    deliberate difference: PyTorch's per-tensor backward rounds ``zero_point + x/scale`` instead
    of ``x/scale``, so at an exact rounding tie with an odd zero point its scale gradient does not
    match its own forward; here the scale gradient always uses the forward's rounding.
    ``grad_factor`` multiplies the scale and zero-point gradients (LSQ: 1/sqrt(numel * quant_max));
    it must be finite and >= 0 (ValueError otherwise).
    """
    scale, zero_point, axis = _prepare(x, scale, zero_point, quant_min, quant_max, axis)
    grad_factor = checks.check_scalar("grad_factor", grad_factor, nonnegative=True)
    return library.lsq_fake_quant(x, scale, zero_point, quant_min, quant_max, axis, grad_factor)


def _check_qdrop_args(p, seed, offset) -> None:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    for name, v in (("seed", seed), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2 ** 63:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")


def qdrop_fake_quant(x: torch.Tensor, scale, zero_point, quant_min: int, quant_max: int,
                     axis: Optional[int] = None, p: float = 0.5, seed: int = 0, offset: int = 0,
                     learnable: bool = False, grad_factor: float = 1.0) -> torch.Tensor:
    """Activation fake-quant with QDrop fused in: ``qdrop_mix(fq(x), x, p, seed, offset)``.

    ``fq`` is :func:`fake_quant` (``learnable=False``) or :func:`lsq_fake_quant`
    (``learnable=True``, gradients to scale / zero point from the quantized elements only). The
    random choice is recomputed in the backward from (seed, element index), never stored.
    """
    scale, zero_point, axis = _prepare(x, scale, zero_point, quant_min, quant_max, axis)
    _check_qdrop_args(p, seed, offset)
    grad_factor = checks.check_scalar("grad_factor", grad_factor, nonnegative=True)
    return library.qdrop_fake_quant(x, scale, zero_point, quant_min, quant_max, axis, float(p), seed, offset,
                                    bool(learnable), grad_factor)


def _check_adaround(w_floor, alpha, scale, zero_point, quant_min, quant_max, axis):
    checks.check_float_tensor("w_floor", w_floor)
    checks.check_float_tensor("alpha", alpha)
    if alpha.shape != w_floor.shape:
        raise ValueError(f"alpha must have the shape of w_floor {tuple(w_floor.shape)}, got {tuple(alpha.shape)}")
    checks.check_same_device("w_floor", w_floor, "alpha", alpha)
    checks.check_quant_range(quant_min, quant_max)
    axis = checks.normalize_axis(axis, w_floor.dim())
    scale = checks.as_param_tensor("scale", scale, w_floor, torch.float32)
    zero_point = checks.as_param_tensor("zero_point", zero_point, w_floor, torch.float32)
    checks.check_qparams(w_floor, scale, zero_point, axis)
    return scale, zero_point, axis


def adaround_fake_quant(w_floor: torch.Tensor, alpha: torch.Tensor, scale, zero_point, quant_min: int,
                        quant_max: int, axis: Optional[int] = 0, hard: bool = False) -> torch.Tensor:
    """AdaRound weights: ``(clamp(w_floor + h(alpha) + zp, quant_min, quant_max) - zp) * scale``.

    ``w_floor = floor(W / s0)`` (frozen), ``alpha`` the rounding logits (same shape), ``scale`` /
    ``zero_point`` per channel along ``axis`` (or one element with axis=None). Soft: ``h`` is the
    rectified sigmoid (gamma=-0.1, zeta=1.1), gradients to alpha and scale; hard: ``h = alpha >= 0``.
    """
    scale, zero_point, axis = _check_adaround(w_floor, alpha, scale, zero_point, quant_min, quant_max, axis)
    return library.adaround_fake_quant(w_floor, alpha, scale, zero_point, quant_min, quant_max, axis, bool(hard))


def adaround_regularizer(alpha: torch.Tensor, beta) -> torch.Tensor:
    """``sum(1 - |2 h(alpha) - 1| ** beta)``: pushes every h to 0 or 1 as beta anneals 20 -> 2."""
    checks.check_float_tensor("alpha", alpha)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta <= 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    return library.adaround_regularizer(alpha, float(beta))


def adaround_init(weight: torch.Tensor, scale: torch.Tensor, axis: Optional[int] = 0
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(w_floor, alpha)`` with ``w_floor = floor(weight / scale)`` and ``h(alpha)`` = the fraction."""
    checks.check_float_tensor("weight", weight)
    axis = checks.normalize_axis(axis, weight.dim())
    scale = checks.as_param_tensor("scale", scale, weight, torch.float32)
    checks.check_qparams(weight, scale, torch.zeros_like(scale), axis)
    return _ref_adaround.adaround_init(weight.detach(), scale.detach(), axis)


def adaround_h(alpha: torch.Tensor) -> torch.Tensor:
    """The rectified sigmoid ``clamp(sigmoid(alpha) * 1.2 - 0.1, 0, 1)``."""
    checks.check_float_tensor("alpha", alpha)
    return _ref_adaround.rectified_sigmoid(alpha)


def qdrop_mix(x_q: torch.Tensor, x_fp: torch.Tensor, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    """QDrop: each element is ``x_q`` with probability ``p`` (QDrop's ``prob``), else ``x_fp``.

    The choice comes from the counter-based generator of :mod:`zsq_engine.ops.reference.rng`
    keyed by ``seed`` and the element's row-major index (+ ``offset``), so it is reproducible and
    identical on every backend. Gradients flow to whichever input was chosen.
    """
    checks.check_float_tensor("x_q", x_q)
    checks.check_float_tensor("x_fp", x_fp)
    if x_q.shape != x_fp.shape or x_q.dtype != x_fp.dtype:
        raise ValueError(f"x_q and x_fp must have the same shape and dtype, got {tuple(x_q.shape)} "
                         f"{x_q.dtype} and {tuple(x_fp.shape)} {x_fp.dtype}")
    checks.check_same_device("x_q", x_q, "x_fp", x_fp)
    _check_qdrop_args(p, seed, offset)
    return _QDropMix.apply(x_q, x_fp, float(p), seed, offset)


class _QDropMix(torch.autograd.Function):
    """The mix and its gradient use the same primitive: the mask is recomputed, never stored
    (d x_q = mix(dy, 0), d x_fp = mix(0, dy))."""

    @staticmethod
    def forward(ctx, x_q, x_fp, p, seed, offset):
        ctx.args = (p, seed, offset)
        return dispatch("qdrop_mix", x_q.device)(x_q.contiguous(), x_fp.contiguous(), p, seed, offset)

    @staticmethod
    def backward(ctx, dy):
        mix = dispatch("qdrop_mix", dy.device)
        dy = dy.contiguous()
        zero = torch.zeros_like(dy)
        d_q = mix(dy, zero, *ctx.args) if ctx.needs_input_grad[0] else None
        d_fp = mix(zero, dy, *ctx.args) if ctx.needs_input_grad[1] else None
        return d_q, d_fp, None, None, None


def scale_search(x: torch.Tensor, quant_min: int, quant_max: int, axis: Optional[int] = 0,
                 num_candidates: int = 80, p: float = 2.4, symmetric: bool = False
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel Lp clipping search (BRECQ 'mse' init; Genie-M uses 100 candidates).

    Returns fp32 ``(scale, zero_point)`` shaped ``[x.shape[axis]]`` (``[1]`` for axis=None)
    minimising ``mean |x - fake_quant(x)|^p`` over clipping ratios 1.0, 0.99, ... of the
    channel's min/max. See :mod:`zsq_engine.ops.reference.scale_search` for the formulas.
    A NaN or infinite ``x`` is a ValueError (CPU tensors; on CUDA only with ZSQ_CHECK_VALUES=1,
    otherwise the scale of such a channel is unspecified): no scale fits such a channel.
    """
    checks.check_float_tensor("x", x)
    checks.check_quant_range(quant_min, quant_max)
    axis = checks.normalize_axis(axis, x.dim())
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or not 1 <= num_candidates <= 100:
        raise ValueError(f"num_candidates must be an int in [1, 100], got {num_candidates!r}")
    if not isinstance(p, (int, float)) or p <= 0:
        raise ValueError(f"p must be a positive number, got {p!r}")
    if x.numel() == 0:
        raise ValueError("x must not be empty")
    checks.check_finite_values("x", x, " (no clipping range fits a channel holding NaN or inf)")
    return library.scale_search(x, quant_min, quant_max, axis, num_candidates, float(p), bool(symmetric))


def minmax_qparams(min_val: torch.Tensor, max_val: torch.Tensor, quant_min: int, quant_max: int,
                   symmetric: bool = False, eps: float = 1e-8) -> Tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(scale, zero_point)`` from observed ranges (widened to contain 0), vectorised.

    ``min_val <= max_val`` everywhere and both finite, else ValueError (CPU tensors; on CUDA only
    with ZSQ_CHECK_VALUES=1, otherwise NaN propagates and an inverted range gives the range [0, 0]
    widened by ``eps``). ``eps`` (> 0) is the smallest scale."""
    checks.check_tensor("min_val", min_val, checks.PARAM_DTYPES)
    checks.check_tensor("max_val", max_val, checks.PARAM_DTYPES)
    if min_val.shape != max_val.shape:
        raise ValueError(f"min_val and max_val must have one shape, got {tuple(min_val.shape)} and "
                         f"{tuple(max_val.shape)}")
    checks.check_same_device("min_val", min_val, "max_val", max_val)
    checks.check_quant_range(quant_min, quant_max)
    checks.check_scalar("eps", eps, positive=True)
    checks.check_finite_values("min_val", min_val)
    checks.check_finite_values("max_val", max_val)
    if min_val.numel() and checks.value_checks_enabled(min_val):
        inverted = (min_val > max_val).nonzero()
        if inverted.numel():
            i = tuple(int(v) for v in inverted[0])
            raise ValueError(f"min_val must be <= max_val everywhere, but at index {i if len(i) != 1 else i[0]} "
                             f"min_val={float(min_val[i])} > max_val={float(max_val[i])}")
    return _ref_search.minmax_qparams(min_val, max_val, quant_min, quant_max, symmetric, eps)
