""":class:`IntModel`: integer layers plus the program that wires them, and its execution.

The program is a list of plain dicts (serialisable, so a saved model is rebuilt without the float
model). Each step reads named slots and writes one. Value conventions inside the program:

* integer codes: ``[B, H, W, C]`` NHWC (or ``[B, K]``), int8 / uint8 of one activation grid;
* float values: fp32, 4-D ones as the logical NCHW view (``x.permute(0, 3, 1, 2)`` of NHWC
  memory, i.e. channels_last), so flatten / pooling see the fake-quant model's element order.

Slots are dropped after their last use, so peak memory stays that of a plain forward.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from .channel_clamp import compile_clamp_step
from .plan import Plan, plan_key, plan_usable
from .qparams import ActQParams
from .quantize import quantize

__all__ = ["IntModel"]


def _same_pads(size: int, k: int, s: int):
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _pool_out(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:  # PyTorch: the last window must start inside the input
        out -= 1
    return out


def _max_pool_nhwc(x: torch.Tensor, kernel_size, stride, padding, dilation, ceil_mode) -> torch.Tensor:
    """Max pooling of NHWC integer codes as the max of kh*kw strided views.

    Quantization is monotonic, so max-pooling codes equals quantizing the max-pooled float value.
    Padding (PyTorch's -inf) is the dtype minimum, never larger than a real code. (PyTorch's own
    max_pool2d rejects some channels_last uint8 shapes, hence this.)"""
    b, h, w, c = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    oh, ow = _pool_out(h, kh, sh, ph, dh, ceil_mode), _pool_out(w, kw, sw, pw, dw, ceil_mode)
    need_h, need_w = (oh - 1) * sh + dh * (kh - 1) + 1, (ow - 1) * sw + dw * (kw - 1) + 1
    low = torch.iinfo(x.dtype).min
    xp = F.pad(x, [0, 0, pw, max(need_w - w - pw, 0), ph, max(need_h - h - ph, 0)], value=low)
    out = None
    for i in range(kh):
        for j in range(kw):
            view = xp[:, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw, :]
            out = view.clone() if out is None else torch.maximum(out, view, out=out)
    return out


class IntModel(nn.Module):
    """An integer model: ``forward(x float [N, C, H, W]) -> float output`` (logits).

    Attributes:
        layers: ``nn.ModuleDict`` of :class:`IntConv2d` / :class:`IntLinear` (their tensors are the
            ``state_dict``).
        program: list of step dicts (see the module doc and ``docs/runtime.md``).
        input_slot, output_slot: names of the input and output values.
    """

    def __init__(self, layers: Dict[str, nn.Module], program: List[dict], input_slot: str, output_slot: str) -> None:
        super().__init__()
        if output_slot is None:
            raise ValueError("program has no output")
        self.layers = nn.ModuleDict(layers)
        self.program = [dict(s) for s in program]
        self.input_slot, self.output_slot = input_slot, output_slot
        self._steps = [self._compile(s) for s in self.program]
        self._release = self._last_uses()
        self._graphs: Dict[tuple, tuple] = {}
        self._plans: Dict[tuple, Plan] = {}
        # forward runs a static plan per input shape on the CPU (plan.py); False: always the
        # step-by-step run (same numbers; kept to measure the plan against)
        self.use_plan = True
        # a plan lets a layer write its fp32 output's codes in the same pass (plan.py); False:
        # the program's separate quantize passes (same numbers; kept to measure the difference)
        self.fuse_codes = True
        # True: the plan writes each layer output into its own buffer allocated once; off because
        # it was slower on ResNet-18 at 224x224 (every value in separate memory instead of the
        # allocator handing back recently freed, cache-warm blocks; docs/runtime.md)
        self.plan_buffers = False
        self.eval()

    # ------------------------------------------------------------------ description
    def architecture(self) -> dict:
        """Everything but the tensors: enough to rebuild the model with :meth:`from_architecture`."""
        return {"layers": [{"key": k, "type": type(m).__name__, "config": dict(m.config)} for k, m in self.layers.items()],
                "program": [dict(s) for s in self.program], "input_slot": self.input_slot,
                "output_slot": self.output_slot}

    @classmethod
    def from_architecture(cls, arch: dict) -> "IntModel":
        """An IntModel with the right structure and placeholder tensors (load a state dict next)."""
        from .modules import IntConv2d, IntLinear

        types = {"IntConv2d": IntConv2d, "IntLinear": IntLinear}
        layers = {}
        for entry in arch["layers"]:
            if entry["type"] not in types:
                raise ValueError(f"unknown integer layer type {entry['type']!r} in the architecture")
            layers[entry["key"]] = types[entry["type"]](entry["config"])
        return cls(layers, arch["program"], arch["input_slot"], arch["output_slot"])

    def bit_widths(self) -> Dict[str, dict]:
        """Per layer: weight bits, input / output grids (None = float)."""
        out = {}
        for m in self.layers.values():
            c = m.config
            out[c["name"]] = {"wbits": c["wbits"], "packed": c["packed"],
                              "input": c["input"], "output": c["output"], "activation": c["activation"],
                              "residual": c["residual"]}
        return out

    def describe(self) -> str:
        """One line per program step (for reports and debugging)."""
        lines = []
        for s in self.program:
            extra = f" [{self.layers[s['layer']].extra_repr()}]" if "layer" in s else ""
            res = f" + {s['residual']}" if s.get("residual") else ""
            lines.append(f"{s['op']:9s} {s['in']}{res} -> {s['out']}{extra}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ execution
    def _compile(self, s: dict):
        op = s["op"]
        if op == "quantize":
            q = ActQParams.from_dict(s["q"])

            def run(env):
                x = env[s["in"]]
                return quantize(x.permute(0, 2, 3, 1), q).contiguous() if x.dim() == 4 else quantize(x, q)
            return run
        if op in ("conv", "linear"):
            layer = self.layers[s["layer"]]
            res = s["residual"]
            return lambda env: layer(env[s["in"]], env[res] if res else None)
        if op == "maxpool":
            args = (s["kernel_size"], s["stride"], s["padding"], s["dilation"], s["ceil_mode"])

            def run(env):
                x = env[s["in"]]
                if x.dtype.is_floating_point:
                    return F.max_pool2d(x, *args)
                return _max_pool_nhwc(x, *args)
            return run
        if op == "pad":
            def run(env):
                x = env[s["in"]]
                if "same" in s:
                    k, st = s["same"]
                    top, bottom = _same_pads(x.shape[1 if not x.dtype.is_floating_point else 2], k, st)
                    left, right = _same_pads(x.shape[2 if not x.dtype.is_floating_point else 3], k, st)
                    pads = [left, right, top, bottom]
                else:
                    pads = s["pads"]
                if x.dtype.is_floating_point:
                    return F.pad(x, pads)
                return F.pad(x, [0, 0] + list(pads), value=s["value"])
            return run
        if op == "flatten":
            def run(env):
                x = env[s["in"]]
                if x.dtype.is_floating_point or x.dim() != 4:
                    return torch.flatten(x, 1)
                return x.permute(0, 3, 1, 2).flatten(1)  # NHWC codes -> the NCHW element order
            return run
        if op == "avgpool":
            if s["global"]:
                return lambda env: F.adaptive_avg_pool2d(env[s["in"][0]], 1)
            args = (s["kernel_size"], s["stride"], s["padding"], s["ceil_mode"], s["count_include_pad"])
            return lambda env: F.avg_pool2d(env[s["in"][0]], *args)
        if op == "add":
            return lambda env: env[s["in"][0]] + env[s["in"][1]]
        if op == "relu":
            return lambda env: torch.relu(env[s["in"][0]])
        if op == "relu6":
            return lambda env: env[s["in"][0]].clamp(0.0, 6.0)
        if op == "chclamp":
            return compile_clamp_step(s)
        raise ValueError(f"unknown program op {op!r}")

    def _last_uses(self) -> List[List[str]]:
        last: Dict[str, int] = {}
        for i, s in enumerate(self.program):
            ins = s["in"] if isinstance(s["in"], list) else [s["in"]]
            for name in ins + ([s["residual"]] if s.get("residual") else []):
                last[name] = i
        release: List[List[str]] = [[] for _ in self.program]
        for name, i in last.items():
            if name != self.output_slot:
                release[i].append(name)
        return release

    def run(self, x: torch.Tensor, keep: bool = False):
        """Execute the program. Returns the output, or ``(output, slots)`` with every intermediate
        value when ``keep`` (for debugging and the tests)."""
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.dim() != 4:
            raise ValueError(f"x must be a float tensor [N, C, H, W], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
                             f"{' ' + str(x.dtype) if isinstance(x, torch.Tensor) else ''}")
        env = {self.input_slot: x.float()}
        for step, fn, release in zip(self.program, self._steps, self._release):
            env[step["out"]] = fn(env)
            if not keep:
                for name in release:
                    env.pop(name, None)
        out = env[self.output_slot]
        if out.dim() == 4:
            out = out.contiguous()
        return (out, env) if keep else out

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        graph = self._graphs.get(self._graph_key(x)) if self._graphs else None
        if graph is not None:
            static_in, static_out, g = graph
            static_in.copy_(x)
            g.replay()
            return static_out.clone()
        if self.use_plan and isinstance(x, torch.Tensor) and plan_usable(x):
            key = plan_key(x)
            plan = self._plans.get(key)
            if plan is not None:
                return plan.run(x)
            out, slots = self.run(x, keep=True)  # checks x; shows every value's shape
            self._plans[key] = Plan(self, slots, fuse_codes=self.fuse_codes, buffers=self.plan_buffers)
            return out
        return self.run(x)

    def drop_plans(self) -> None:
        """Forget the CPU execution plans (they are rebuilt on the next call)."""
        self._plans.clear()

    # ------------------------------------------------------------------ CUDA graphs
    @staticmethod
    def _graph_key(x: torch.Tensor) -> tuple:
        return (tuple(x.shape), x.dtype, str(x.device))

    @torch.no_grad()
    def capture_cuda_graph(self, example: torch.Tensor, warmup: int = 3) -> "IntModel":
        """Capture the forward for inputs shaped like ``example`` (a CUDA tensor) in a CUDA graph;
        later calls with that shape, dtype and device replay it (one launch instead of one per
        kernel, which is what small batches are bound by). Returns self."""
        if not torch.cuda.is_available():
            raise RuntimeError("capture_cuda_graph needs a CUDA device; none is available")
        if not isinstance(example, torch.Tensor) or example.device.type != "cuda":
            raise ValueError("example must be a CUDA tensor on the model's device")
        static_in = example.clone()
        stream = torch.cuda.Stream(device=example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):  # compiles the kernels and prepares the layers outside the capture
                self.run(static_in)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.run(static_in)
        self._graphs[self._graph_key(example)] = (static_in, static_out, graph)
        return self

    def drop_cuda_graphs(self) -> None:
        """Forget captured graphs (call after moving the model or changing its tensors)."""
        self._graphs.clear()

    def _apply(self, fn, *args, **kwargs):
        self._graphs.clear()  # captured graphs point at the old storage
        self._plans.clear()
        return super()._apply(fn, *args, **kwargs)
