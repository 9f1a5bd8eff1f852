"""Validation of an integer-model file's content before anything is built from it.

:func:`check_payload` reads only the loaded dict (plain containers and the stored tensors) and
raises ``ValueError`` with one reason when the file could not describe a working model: layer
geometry that disagrees with the stored tensors (so a crafted ``out_channels = 1e9`` is refused
before any buffer is allocated), activation grids with a scale that is not finite and positive
or a range that is not ordered, non-finite weight scales or biases, a program that reads a slot
nothing wrote or names a layer that does not exist. Weight scales may be zero or negative: a
folded BatchNorm with gamma <= 0 gives them legitimately.
"""
from __future__ import annotations

import math
from typing import Dict

import torch

from .channel_clamp import check_clamp_step

__all__ = ["check_payload"]

LAYER_TYPES = ("IntConv2d", "IntLinear")
ACTIVATIONS = ("none", "relu", "relu6")
PROGRAM_OPS = ("quantize", "conv", "linear", "maxpool", "pad", "flatten", "avgpool", "add", "relu", "relu6",
               "chclamp")


def _int(where: str, v, minimum: int = 1, maximum: int = 2 ** 31 - 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= maximum:
        raise ValueError(f"{where} must be an int in [{minimum}, {maximum}], got {v!r}")
    return v


def _pair(where: str, v, minimum: int) -> tuple:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ValueError(f"{where} must be a pair of ints, got {v!r}")
    return tuple(_int(f"{where}[{i}]", x, minimum, 2 ** 16) for i, x in enumerate(v))


def check_grid(where: str, g) -> None:
    """An activation grid ``{scale, zero_point, qmin, qmax}``: finite positive scale, ordered
    int8 / uint8 range, zero point inside it."""
    if not isinstance(g, dict) or not {"scale", "zero_point", "qmin", "qmax"} <= set(g):
        raise ValueError(f"{where} must be a grid dict with scale, zero_point, qmin, qmax, got {g!r}")
    scale = g["scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{where} scale must be a finite number > 0, got {scale!r}")
    qmin, qmax = _int(f"{where} qmin", g["qmin"], -128, 255), _int(f"{where} qmax", g["qmax"], -128, 255)
    if qmin >= qmax:
        raise ValueError(f"{where} range is not ordered: qmin {qmin} >= qmax {qmax}")
    hi = 127 if qmin < 0 else 255
    if qmax > hi:
        raise ValueError(f"{where} range [{qmin}, {qmax}] does not fit {'int8' if qmin < 0 else 'uint8'}")
    _int(f"{where} zero_point", g["zero_point"], qmin, qmax)


def _tensor(state: Dict[str, torch.Tensor], key: str, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    t = state.get(key)
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"tensor {key} is missing")
    if t.dtype != dtype:
        raise ValueError(f"tensor {key} has dtype {str(t.dtype).replace('torch.', '')}, expected "
                         f"{str(dtype).replace('torch.', '')}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"tensor {key} has shape {tuple(t.shape)}, but the layer's geometry needs {tuple(shape)}")
    return t


def _finite(key: str, t: torch.Tensor) -> None:
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"tensor {key} holds NaN or infinite values")


def _check_layer(entry, state: Dict[str, torch.Tensor], used: set) -> str:
    if not isinstance(entry, dict) or not {"key", "type", "config"} <= set(entry):
        raise ValueError(f"a layer entry must be a dict with key, type, config, got {entry!r:.80}")
    key, kind, c = entry["key"], entry["type"], entry["config"]
    if not isinstance(key, str) or not key or "." in key:
        raise ValueError(f"layer key {key!r} is not a plain name")
    if kind not in LAYER_TYPES:
        raise ValueError(f"layer {key}: unknown type {kind!r} (expected one of {', '.join(LAYER_TYPES)})")
    if not isinstance(c, dict):
        raise ValueError(f"layer {key}: config must be a dict")
    where = f"layer {key}"
    wbits = _int(f"{where} wbits", c.get("wbits"), 2, 8)
    if c.get("packed") is not (wbits <= 4):
        raise ValueError(f"{where}: packed={c.get('packed')!r} does not match wbits={wbits} (packed int4 iff <= 4 bits)")
    if not isinstance(c.get("has_bias"), bool):
        raise ValueError(f"{where}: has_bias must be true or false")
    if c.get("activation") not in ACTIVATIONS:
        raise ValueError(f"{where}: activation must be one of {ACTIVATIONS}, got {c.get('activation')!r}")
    for grid in ("input", "output"):
        if c.get(grid) is not None:
            check_grid(f"{where} {grid} grid", c[grid])
    residual = c.get("residual")
    if residual is not None and residual != "float":
        check_grid(f"{where} residual grid", residual)
    if kind == "IntConv2d":
        cin, cout = _int(f"{where} in_channels", c.get("in_channels")), _int(f"{where} out_channels", c.get("out_channels"))
        groups = _int(f"{where} groups", c.get("groups"))
        if cin % groups or cout % groups:
            raise ValueError(f"{where}: {cin} input and {cout} output channels are not divisible by groups={groups}")
        kh, kw = _pair(f"{where} kernel_size", c.get("kernel_size"), 1)
        _pair(f"{where} stride", c.get("stride"), 1)
        _pair(f"{where} padding", c.get("padding"), 0)
        _pair(f"{where} dilation", c.get("dilation"), 1)
        out_ch, reduction, weight_shape = cout, kh * kw * (cin // groups), (cout, kh, kw, cin // groups)
    else:
        k, out_ch = _int(f"{where} in_features", c.get("in_features")), _int(f"{where} out_features", c.get("out_features"))
        reduction, weight_shape = k, (out_ch, k)
    prefix = f"layers.{key}."
    if c["packed"]:
        _tensor(state, prefix + "weight_packed", torch.uint8, (out_ch, (reduction + 1) // 2))
        names = ["weight_packed"]
    else:
        _tensor(state, prefix + "weight", torch.int8, weight_shape)
        names = ["weight"]
    _tensor(state, prefix + "weight_zero_point", torch.int32, (out_ch,))
    _finite(prefix + "weight_scale", _tensor(state, prefix + "weight_scale", torch.float32, (out_ch,)))
    names += ["weight_zero_point", "weight_scale"]
    if c["has_bias"]:
        _finite(prefix + "bias", _tensor(state, prefix + "bias", torch.float32, (out_ch,)))
        names.append("bias")
    used.update(prefix + n for n in names)
    return key


def _slots(where: str, v, many: bool):
    names = v if many and isinstance(v, list) else [v]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{where} must name {'slots' if many else 'a slot'}, got {v!r}")
    return names


def _check_program(program, layers: set, input_slot: str) -> None:
    defined = {input_slot}
    for i, s in enumerate(program):
        where = f"program step {i}"
        if not isinstance(s, dict) or s.get("op") not in PROGRAM_OPS:
            raise ValueError(f"{where}: unknown op {s.get('op') if isinstance(s, dict) else s!r}")
        ins = _slots(f"{where} in", s.get("in"), many=True)
        if s.get("residual"):
            ins = ins + _slots(f"{where} residual", s["residual"], many=False)
        missing = [n for n in ins if n not in defined]
        if missing:
            raise ValueError(f"{where} ({s['op']}) reads {missing[0]!r}, which no earlier step writes")
        if s["op"] in ("conv", "linear") and s.get("layer") not in layers:
            raise ValueError(f"{where} ({s['op']}) names layer {s.get('layer')!r}, which the file does not hold")
        if s["op"] == "quantize":
            check_grid(f"{where} grid", s.get("q"))
        if s["op"] == "chclamp":
            check_clamp_step(where, s)
        defined.update(_slots(f"{where} out", s.get("out"), many=False))


def check_payload(obj: dict) -> None:
    """Raise ValueError (one reason) unless ``obj`` (a loaded integer-model file of the current
    format) describes a model that can be built and run."""
    arch, state = obj.get("architecture"), obj.get("state_dict")
    if not isinstance(arch, dict) or not isinstance(arch.get("layers"), list) or not isinstance(arch.get("program"), list):
        raise ValueError("its architecture is missing or has no layers / program lists")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError("its state_dict is missing or is not a dict of tensors")
    input_slot, output_slot = arch.get("input_slot"), arch.get("output_slot")
    if not isinstance(input_slot, str) or not isinstance(output_slot, str):
        raise ValueError("its architecture does not name the input and output slots")
    used: set = set()
    keys = [_check_layer(e, state, used) for e in arch["layers"]]
    if len(set(keys)) != len(keys):
        raise ValueError("two layers share one key")
    extra = sorted(set(state) - used)
    if extra:
        raise ValueError(f"tensor {extra[0]} belongs to no layer of the architecture")
    _check_program(arch["program"], set(keys), input_slot)
    if output_slot not in {input_slot} | {s["out"] for s in arch["program"]}:
        raise ValueError(f"the output slot {output_slot!r} is written by no program step")
