"""Per-channel upper clips in the integer runtime: DFQ's exact ReLU6 replacement
(:class:`zsq_engine.synth_free.ChannelClamp`, ``min(relu(x), upper[c])``).

Lowering: the ChannelClamp node becomes a ``relu`` (fused into the producing kernel's epilogue
like any ReLU) followed by a ``chclamp`` step. Every activation quantizer is monotone
non-decreasing (``clamp(round(v * (1/s)) + z)`` in fp32), so for each consumer grid ``Q``
``Q(min(r, u_c)) = min(Q(r), Q(u_c))``: the clip of the float value equals a clip of the output
CODES to ``Q(u_c)``, computed once here with the runtime's own :func:`.quantize`. The step
therefore passes demands through like zero padding (``chclamp`` is transparent to grids) and
costs one ``minimum`` over the codes; where a float value is demanded it clips in fp32, as the
fake-quant model does.

Step format: ``{"op": "chclamp", "in": slot, "out": slot, "upper": [per-channel bound]}`` with
integer codes for a code slot and fp32 values (python floats) for a float slot.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Union

import torch
from torch import nn

from .qparams import ActQParams
from .quantize import quantize

__all__ = ["OP", "is_channel_clamp", "clamp_step", "compile_clamp_step", "check_clamp_step"]

OP = "chclamp"


def is_channel_clamp(m: nn.Module) -> bool:
    from ..synth_free.clamp import ChannelClamp

    return type(m) is ChannelClamp


def clamp_step(in_slot: str, out_slot: str, upper: torch.Tensor, rep: Union[str, ActQParams]) -> dict:
    """The program step clipping ``in_slot`` (codes of ``rep``, or float when ``rep`` is not an
    :class:`ActQParams`) to the per-channel ``upper`` bounds of a ChannelClamp."""
    u = upper.detach().to("cpu", torch.float32)
    if isinstance(rep, ActQParams):
        bounds = [int(v) for v in quantize(u, rep).tolist()]
    else:
        bounds = [float(v) for v in u.tolist()]
    return {"op": OP, "in": in_slot, "out": out_slot, "upper": bounds}


def compile_clamp_step(s: dict) -> Callable[[Dict[str, torch.Tensor]], torch.Tensor]:
    """``env -> clipped value`` for a step of :func:`clamp_step`. Codes are NHWC (channel last) or
    ``[B, C]``; float values the logical NCHW view or ``[B, C]``."""
    bounds = s["upper"]
    cache: Dict[tuple, torch.Tensor] = {}

    def run(env):
        x = env[s["in"]]
        key = (x.dtype, x.device)
        hi = cache.get(key)
        if hi is None:  # one small tensor per dtype / device, made on first use (not inside a graph capture)
            hi = cache[key] = torch.tensor(bounds, dtype=x.dtype, device=x.device)
        if x.dtype.is_floating_point and x.dim() == 4:
            return torch.minimum(x, hi.view(1, -1, 1, 1))
        return torch.minimum(x, hi)  # NHWC codes and [B, C] values: channels are the last dim
    return run


def check_clamp_step(where: str, s: dict) -> None:
    """Raise ValueError unless the step's ``upper`` is a non-empty list of finite numbers."""
    u = s.get("upper")
    if not isinstance(u, list) or not u or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in u):
        raise ValueError(f"{where} ({OP}): upper must be a non-empty list of finite per-channel bounds")
