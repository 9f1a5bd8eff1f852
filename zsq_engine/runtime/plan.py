"""The static execution plan of an :class:`IntModel` on the CPU (docs/runtime.md, "Execution").

:meth:`IntModel.run` interprets the program: each step goes through ``nn.Module.__call__``, the
layer's input checks and a backend lookup. A plan is built once per input shape from one such
run (which shows every value's shape) and then runs each step as one call: integer layers call
their prepared kernel (:mod:`.cpu_launch`) directly, quantize steps write into buffers
allocated once, every other step is the program's own step function. Values keep the
program's conventions, so the plan's output equals :meth:`IntModel.run`'s bit for bit.

A plan is only used where the step-by-step run would call the same C++ kernels (CPU input,
no other backend forced); the model drops its plans whenever its tensors move or reload.
"""
from __future__ import annotations

import threading
from typing import Callable, Dict, List, Tuple

import torch

from .cpu_launch import cpu_kernels_selected
from .qparams import ActQParams
from .quantize import _fp32_reciprocal

__all__ = ["Plan", "plan_usable"]

Step = Callable[[dict], torch.Tensor]


def plan_usable(x: torch.Tensor) -> bool:
    """Whether a plan may run ``x`` now: a CPU input and the C++ ``cpu`` backend selected for
    both integer ops (a forced ``reference`` backend must see every call)."""
    return x.device.type == "cpu" and cpu_kernels_selected("qconv2d_nhwc") and cpu_kernels_selected("qgemm")


def _layer_step(layer, s: dict) -> Step:
    src, res_name, out_name = s["in"], s["residual"], s["out"]
    conv = s["op"] == "conv"
    float_out = layer.output_q is None
    float_res = bool(res_name) and layer.residual_q is None

    def run(env):
        launch = layer._launch if layer._ready else None
        if launch is None:  # not prepared yet, or no C++ call for this layer (float input)
            return layer(env[src], env[res_name] if res_name else None)
        res = None
        if res_name:
            res = env[res_name]
            if float_res and conv:
                res = res.permute(0, 2, 3, 1)  # the NCHW view of NHWC memory back to NHWC (no copy)
        y = launch(env[src], res)
        return y.permute(0, 3, 1, 2) if float_out and conv else y
    run.__name__ = f"plan_{out_name}"
    return run


def _quantize_step(src: str, q: ActQParams, value: torch.Tensor) -> Step:
    """quantize() of :mod:`.quantize` into buffers allocated here: the same fp32 operations in the
    same order (multiply by fp32(1/s), round half to even, add z, clamp, cast), no allocation."""
    inv, zp, lo, hi = _fp32_reciprocal(q.scale), q.zero_point, q.qmin, q.qmax
    shape = (value.shape[0], value.shape[2], value.shape[3], value.shape[1]) if value.dim() == 4 else value.shape
    scratch = torch.empty(shape, dtype=torch.float32)
    codes = torch.empty(shape, dtype=q.dtype)
    nhwc = value.dim() == 4

    def run(env):
        x = env[src]
        torch.mul(x.permute(0, 2, 3, 1) if nhwc else x, inv, out=scratch)
        scratch.round_().add_(zp).clamp_(lo, hi)
        return codes.copy_(scratch)
    return run


class Plan:
    """The steps of one :class:`IntModel` for one input shape (built by :meth:`IntModel.forward`)."""

    def __init__(self, model, slots: Dict[str, torch.Tensor]) -> None:
        self.input_slot, self.output_slot = model.input_slot, model.output_slot
        steps: List[Tuple[str, Step, List[str]]] = []
        for s, generic, release in zip(model.program, model._steps, model._release):
            op = s["op"]
            if op in ("conv", "linear"):
                fn = _layer_step(model.layers[s["layer"]], s)
            elif op == "quantize" and slots[s["in"]].dtype == torch.float32:
                fn = _quantize_step(s["in"], ActQParams.from_dict(s["q"]), slots[s["in"]])
            else:
                fn = generic
            steps.append((s["out"], fn, release))
        self.steps = steps

    def run(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input_slot: x if x.dtype == torch.float32 else x.float()}
        for out, fn, release in self.steps:
            env[out] = fn(env)
            for name in release:
                env.pop(name, None)
        out = env[self.output_slot]
        return out.contiguous() if out.dim() == 4 else out


def plan_key(x: torch.Tensor) -> tuple:
    """Plans hold buffers, so each thread gets its own (two threads never share a buffer)."""
    return (tuple(x.shape), x.dtype, threading.get_ident())
