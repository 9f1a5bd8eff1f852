"""The static execution plan of an :class:`IntModel` on the CPU (docs/runtime.md, "Execution").

:meth:`IntModel.run` interprets the program: each step goes through ``nn.Module.__call__``, the
layer's input checks and a backend lookup. A plan is built once per input shape from one such
run (which shows every value's shape) and then runs each step as one call: integer layers call
their prepared kernel (:mod:`.cpu_launch`) directly (into output buffers allocated once when
``buffers``: off by default, measured slower on ResNet-18 at 224x224, docs/runtime.md),
quantize steps write into buffers allocated once, and a layer whose fp32 output the program quantizes next
writes those codes in the same pass (the kernel's second output). Every other step is the
program's own step function. Values keep the program's conventions and the arithmetic is the
same, so the plan's output equals :meth:`IntModel.run`'s bit for bit.

A plan is only used where the step-by-step run would call the same C++ kernels (CPU input,
no other backend forced); the model drops its plans whenever its tensors move or reload.
"""
from __future__ import annotations

import threading
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..ops.int_gemm.cpu import PreparedIntCall
from .cpu_launch import cpu_kernels_selected
from .qparams import ActQParams
from .quantize import _fp32_reciprocal

__all__ = ["Plan", "plan_usable"]

Step = Callable[[dict], torch.Tensor]


def plan_usable(x: torch.Tensor) -> bool:
    """Whether a plan may run ``x`` now: a CPU input and the C++ ``cpu`` backend selected for
    both integer ops (a forced ``reference`` backend must see every call)."""
    return x.device.type == "cpu" and cpu_kernels_selected("qconv2d_nhwc") and cpu_kernels_selected("qgemm")


def _nhwc_shape(value: torch.Tensor) -> tuple:
    """The physical (NHWC) shape of a program value: 4-D float values are NCHW views of NHWC memory."""
    if value.dim() == 4 and value.dtype.is_floating_point:
        return (value.shape[0], value.shape[2], value.shape[3], value.shape[1])
    return tuple(value.shape)


def _layer_step(layer, s: dict, value: torch.Tensor, alloc, own_buffer: bool, codes: Optional[tuple]) -> Step:
    """One integer layer: its prepared call with the residual, into an output buffer allocated
    here (``own_buffer``); with ``codes = (slot, ActQParams)`` the same call also writes the
    fp32 output's codes of that grid (what the program's quantize step of it would compute)."""
    src, res_name = s["in"], s["residual"]
    conv = s["op"] == "conv"
    float_out = layer.output_q is None
    float_res = bool(res_name) and layer.residual_q is None
    out_buf = alloc(_nhwc_shape(value), value.dtype) if own_buffer else None
    codes_slot, codes_buf, codes_q = None, None, None
    if codes is not None:
        codes_slot, codes_q = codes
        codes_buf = alloc(_nhwc_shape(value), codes_q.dtype) if own_buffer else None

    def run(env):
        launch = layer._launch if layer._ready else None
        if launch is None:  # not prepared yet, or no C++ call for this layer (float input)
            return layer(env[src], env[res_name] if res_name else None)
        res = None
        if res_name:
            res = env[res_name]
            if float_res and conv:
                res = res.permute(0, 2, 3, 1)  # the NCHW view of NHWC memory back to NHWC (no copy)
        if not isinstance(launch, PreparedIntCall):  # a wrapped / replaced launch: call it as it is
            y = launch(env[src], res)
        elif codes_slot is not None and (both := layer.codes_launch(codes_q)) is not None:
            y, env[codes_slot] = both.call_into(env[src], res, out_buf, codes_buf)
        else:
            y = launch.call_into(env[src], res, out_buf, None)[0]
        return y.permute(0, 3, 1, 2) if float_out and conv else y
    return run


def _quantize_step(src: str, out: str, q: ActQParams, value: torch.Tensor, alloc, fused: bool) -> Step:
    """quantize() of :mod:`.quantize` into buffers allocated here: the same fp32 operations in the
    same order (multiply by fp32(1/s), round half to even, add z, clamp, cast), no allocation.
    ``fused``: the producing layer usually wrote these codes already (then this step only
    passes them on)."""
    inv, zp, lo, hi = _fp32_reciprocal(q.scale), q.zero_point, q.qmin, q.qmax
    shape = _nhwc_shape(value)
    scratch = alloc(shape, torch.float32)
    codes = alloc(shape, q.dtype)
    nhwc = value.dim() == 4

    def run(env):
        if fused:
            done = env.get(out)
            if done is not None:
                return done
        x = env[src]
        torch.mul(x.permute(0, 2, 3, 1) if nhwc else x, inv, out=scratch)
        scratch.round_().add_(zp).clamp_(lo, hi)
        return codes.copy_(scratch)
    return run


class Plan:
    """The steps of one :class:`IntModel` for one input shape (built by :meth:`IntModel.forward`)."""

    def __init__(self, model, slots: Dict[str, torch.Tensor], fuse_codes: bool = True, buffers: bool = False) -> None:
        self.input_slot, self.output_slot = model.input_slot, model.output_slot
        program = model.program
        producer = {s["out"]: i for i, s in enumerate(program)}
        # a float layer output whose codes a quantize step makes: the layer writes both in one pass
        fused: Dict[int, tuple] = {}
        for s in program:
            if not fuse_codes or s["op"] != "quantize" or s["in"] not in producer:
                continue
            i = producer[s["in"]]
            src = program[i]
            if src["op"] in ("conv", "linear") and i not in fused:
                layer = model.layers[src["layer"]]
                if layer.input_q is not None and layer.output_q is None:
                    fused[i] = (s["out"], ActQParams.from_dict(s["q"]))
        fused_slots = {v[0] for v in fused.values()}
        steps: List[Tuple[str, Step, List[str]]] = []
        self._storages = set()

        def alloc(shape, dtype) -> torch.Tensor:
            # a normal tensor even when the plan is built under torch.inference_mode(): an
            # inference tensor could not be written in place by later calls outside it
            with torch.inference_mode(False):
                t = torch.empty(shape, dtype=dtype)
            self._storages.add(t.untyped_storage().data_ptr())
            return t
        for i, (s, generic, release) in enumerate(zip(program, model._steps, model._release)):
            op = s["op"]
            if op in ("conv", "linear"):
                value = slots[s["out"]]
                fn = _layer_step(model.layers[s["layer"]], s, value, alloc, buffers and s["out"] != self.output_slot,
                                 fused.get(i))
            elif op == "quantize" and slots[s["in"]].dtype == torch.float32:
                fn = _quantize_step(s["in"], s["out"], ActQParams.from_dict(s["q"]), slots[s["in"]], alloc,
                                    s["out"] in fused_slots)
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
        # the output never is one of the plan's buffers (layer steps write the output slot into a
        # fresh tensor), but a view of one could be: then copy it
        out = out.contiguous() if out.dim() == 4 else out
        return out if out.untyped_storage().data_ptr() not in self._storages else out.clone()


def plan_key(x: torch.Tensor) -> tuple:
    """Plans hold buffers, so each thread gets its own (two threads never share a buffer)."""
    return (tuple(x.shape), x.dtype, threading.get_ident())
