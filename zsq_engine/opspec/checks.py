"""Argument validation shared by the public ops and the kernel launchers (one copy of each check).

Every check names the argument and what was expected. Checks that would need the values of a
CUDA tensor (a host synchronisation) are skipped on CUDA unless ``ZSQ_CHECK_VALUES=1``: the
training-path ops must never stall the GPU pipeline. On CPU tensors they always run (no sync),
except under torch.compile tracing. Python scalars are always checked.

Policy for bad parameter values (the same on every backend, since the checks run in the op
layer before dispatch): a Python scalar that is NaN / infinite / out of range is a ValueError;
a tensor parameter is checked where :func:`value_checks_enabled` allows and otherwise
propagates -- a NaN scale or zero point gives NaN outputs, as PyTorch does for a NaN in ``x``.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple, Union

import torch

from .dtypes import FLOAT_DTYPES, PARAM_DTYPES

ScalarOrTensor = Union[float, int, torch.Tensor]


def value_checks_enabled(t: torch.Tensor) -> bool:
    """Whether checks that read tensor values are allowed for ``t`` (no device sync).

    Never while torch.compile traces: reading a value would break the graph.
    """
    if torch.compiler.is_compiling():
        return False
    return t.device.type == "cpu" or os.environ.get("ZSQ_CHECK_VALUES", "0") not in ("", "0")


def check_tensor(name: str, t, dtypes=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        expected = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({expected}), got {str(t.dtype).replace('torch.', '')}")


def check_float_tensor(name: str, t) -> None:
    check_tensor(name, t, FLOAT_DTYPES)


def check_same_device(ref_name: str, ref: torch.Tensor, name: str, t: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; put them on one device")


def check_same(ref_name: str, ref: torch.Tensor, name: str, t: torch.Tensor, same_shape: bool = True) -> None:
    """``t`` is on ``ref``'s device and, with ``same_shape``, has its shape."""
    check_same_device(ref_name, ref, name, t)
    if same_shape and t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")


def check_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be a python int, got {type(v).__name__}")
    return v


def check_number(name: str, v) -> float:
    """A Python number (any value, inf and NaN included); returns it as a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a python float or int, got {type(v).__name__}")
    return float(v)


def check_quant_range(quant_min, quant_max) -> Tuple[int, int]:
    for name, v in (("quant_min", quant_min), ("quant_max", quant_max)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if not -(2 ** 31) <= v < 2 ** 31:
            raise ValueError(f"{name} must fit in int32, got {v}")
    if quant_min >= quant_max:
        raise ValueError(f"quant_min must be < quant_max, got quant_min={quant_min}, quant_max={quant_max}")
    return quant_min, quant_max


def normalize_axis(axis: Optional[int], ndim: int, name: str = "axis") -> Optional[int]:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"{name} must be an int or None, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for a tensor with {ndim} dimensions "
                         f"(expected {-ndim} <= {name} < {ndim})")
    return axis % ndim


def check_scalar(name: str, v, positive: bool = False, nonnegative: bool = False) -> float:
    """A Python number that must be finite (and > 0 / >= 0 when asked); returns it as a float."""
    v = check_number(name, v)
    if not math.isfinite(v) or (positive and not v > 0) or (nonnegative and not v >= 0):
        want = "finite and > 0" if positive else "finite and >= 0" if nonnegative else "finite"
        raise ValueError(f"{name} must be {want}, got {v}")
    return v


def as_param_tensor(name: str, v: ScalarOrTensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A python scalar (checked: finite) becomes a 1-element tensor on x's device; a tensor is
    checked for its device, not copied."""
    if isinstance(v, torch.Tensor):
        check_same_device("x", x, name, v)
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a float, an int or a torch.Tensor, got {type(v).__name__}")
    check_scalar(name, v)
    return torch.tensor([v], dtype=dtype, device=x.device)


def check_finite_values(name: str, t: torch.Tensor, what: str = "") -> None:
    """``t`` holds no NaN / inf, where reading its values is allowed (:func:`value_checks_enabled`)."""
    if t.numel() and value_checks_enabled(t) and not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{name} must be finite everywhere{what}, but it holds NaN or infinite values")


def check_qparams(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                  axis: Optional[int]) -> None:
    """Shapes, dtypes and (where no sync is needed) values of scale / zero_point."""
    check_tensor("scale", scale, PARAM_DTYPES)
    if zero_point.dtype not in (torch.int32, torch.int64) + PARAM_DTYPES:
        raise TypeError(f"zero_point must be an int32/int64 or floating tensor, got {zero_point.dtype}")
    if axis is None:
        if scale.numel() != 1:
            raise ValueError(f"scale must have exactly one element for per-tensor quantization (axis=None), "
                             f"got shape {tuple(scale.shape)}; pass axis= for per-channel")
        if zero_point.numel() != 1:
            raise ValueError(f"zero_point must have exactly one element for per-tensor quantization, "
                             f"got shape {tuple(zero_point.shape)}")
    else:
        channels = x.shape[axis]
        if scale.dim() != 1 or scale.shape[0] != channels:
            raise ValueError(f"scale must have shape [{channels}] (x.shape[axis={axis}]) for per-channel "
                             f"quantization, got {tuple(scale.shape)}")
        if zero_point.shape != scale.shape:
            raise ValueError(f"zero_point must have the shape of scale {tuple(scale.shape)}, "
                             f"got {tuple(zero_point.shape)}")
    if scale.numel() and value_checks_enabled(scale):
        # one pass (a NaN propagates into both ends), two host reads: cheap next to a kernel call
        low, high = torch.aminmax(scale.detach())
        if not (float(low) > 0 and math.isfinite(float(high))):
            raise ValueError("scale must be finite and > 0 everywhere")
    if zero_point.dtype.is_floating_point:
        check_finite_values("zero_point", zero_point)


def channel_view_shape(ndim: int, axis: Optional[int]) -> Tuple[int, ...]:
    """Shape that broadcasts a per-channel vector along ``axis`` of an ``ndim`` tensor."""
    if axis is None:
        return (1,) * max(ndim, 1) if ndim else ()
    shape = [1] * ndim
    shape[axis] = -1
    return tuple(shape)


def check_conv3x3_args(x, weight, bias) -> None:
    """Arguments of the re-expressed 3x3 convolutions: ``x`` [N, C_in, H, W], ``weight``
    [C_out, C_in, 3, 3], ``bias`` [C_out] or None; any float dtype (they run plain PyTorch
    convolutions and GEMMs, so float64 is allowed too)."""
    any_float = (torch.float64, *FLOAT_DTYPES)
    check_tensor("x", x, any_float)
    check_tensor("weight", weight, any_float)
    if bias is not None:
        check_tensor("bias", bias, any_float)
    if x.dim() != 4:
        raise ValueError(f"x must be [N, C_in, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (x.shape[1], 3, 3):
        raise ValueError(f"weight must be [C_out, {x.shape[1]}, 3, 3] for x with {x.shape[1]} channels, "
                         f"got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}] (one per output channel) or None, "
                         f"got shape {tuple(bias.shape)}")
