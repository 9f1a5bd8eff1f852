"""Integer layers: :class:`IntConv2d` (NHWC) and :class:`IntLinear`, built from fake-quant layers and
described by a plain ``config`` dict plus tensors (layout: docs/runtime.md).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..opspec.epilogue import Epilogue
from .cpu_launch import cpu_kernels_selected, make_launch
from .qparams import ActQParams, integer_weight
from .quantize import nhwc_to_nchw, quantize

__all__ = ["IntConv2d", "IntLinear", "ACTIVATIONS"]

ACTIVATIONS = ("none", "relu", "relu6")


def _q(d: Optional[dict]) -> Optional[ActQParams]:
    return None if d is None else ActQParams.from_dict(d)


def _activation(v: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return torch.relu(v)
    if name == "relu6":
        return v.clamp(0.0, 6.0)
    return v


class _IntLayer(nn.Module):
    """Storage, preparation and epilogue shared by the two integer layers."""

    def __init__(self, config: dict, weight_shape, reduction: int) -> None:
        super().__init__()
        self.config = dict(config)
        c = self.config
        if c["activation"] not in ACTIVATIONS:
            raise ValueError(f"config activation must be one of {ACTIVATIONS}, got {c['activation']!r}")
        self.input_q = _q(c["input"])
        self.output_q = _q(c["output"])
        self.residual = c["residual"]
        self.residual_q = _q(c["residual"]) if isinstance(c["residual"], dict) else None
        self.reduction = reduction
        out_ch = weight_shape[0]
        if c["packed"]:
            self.register_buffer("weight_packed", torch.zeros(out_ch, (reduction + 1) // 2, dtype=torch.uint8))
        else:
            self.register_buffer("weight", torch.zeros(*weight_shape, dtype=torch.int8))
        self.register_buffer("weight_zero_point", torch.zeros(out_ch, dtype=torch.int32))
        self.register_buffer("weight_scale", torch.ones(out_ch, dtype=torch.float32))
        if c["has_bias"]:
            self.register_buffer("bias", torch.zeros(out_ch, dtype=torch.float32))
        else:
            self.bias = None
        # Derived once per load (not saved): the weight as the kernels take it.
        self.register_buffer("_w_run", None, persistent=False)
        self.register_buffer("_zw_run", None, persistent=False)
        self.register_buffer("_col_sum", None, persistent=False)
        self.register_buffer("_w_float", None, persistent=False)
        self._ready = False
        self._epilogue: Optional[Epilogue] = None
        self._launch = None  # prepared call of the C++ CPU kernel (cpu_launch.py)
        self._codes_launches: dict = {}  # the same with a second, codes output (codes_launch)

    # ------------------------------------------------------------------ storage
    def _store(self, codes: torch.Tensor, zp: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int,
               bias: Optional[torch.Tensor]) -> None:
        """Fill the saved tensors from integer codes ``[O, ...]`` (OHWI for convs)."""
        codes = codes.to(torch.int32).cpu()
        zp = zp.to(torch.int32).cpu()
        out_ch = codes.shape[0]
        if self.config["packed"]:
            offset = 8 if qmin >= 0 else 0  # unsigned 4-bit grid -> two's-complement nibbles
            stored = (codes - offset).reshape(out_ch, -1).to(torch.int8)
            self.weight_packed = ops.pack_int4(stored)
            self.weight_zero_point = zp - offset
        else:
            folded = codes - zp.reshape(-1, *([1] * (codes.dim() - 1)))
            if folded.min() >= -128 and folded.max() <= 127:
                # the zero point folds into the codes: no correction term in the kernel
                self.weight = folded.to(torch.int8)
                self.weight_zero_point = torch.zeros_like(zp)
            else:
                offset = 128 if qmin >= 0 else 0
                self.weight = (codes - offset).to(torch.int8)
                self.weight_zero_point = zp - offset
        self.weight_scale = scale.detach().float().cpu().contiguous()
        if self.bias is not None:
            self.bias = bias.detach().float().cpu().contiguous()
        self._ready = False

    def stored_codes(self) -> torch.Tensor:
        """Stored weight codes as int8 in the conv / linear weight shape (unpacked)."""
        if self.config["packed"]:
            return ops.unpack_int4(self.weight_packed, self.reduction, True).reshape(self._weight_shape())
        return self.weight

    def _weight_shape(self):
        raise NotImplementedError

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() replace the buffers: the epilogue and the pre-packed launch still point
        # at the old ones, so derive them again on the next forward
        self._ready = False
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ preparation
    @torch.no_grad()
    def prepare(self) -> "_IntLayer":
        """Derive the run-time weight (widened / zero point folded) and the epilogue. Idempotent."""
        codes = self.stored_codes()
        zw = self.weight_zero_point
        shape = (-1,) + (1,) * (codes.dim() - 1)
        if self.input_q is None:
            # float input: the fake-quant weight, bit for bit ((q - z) * s in fp32)
            w = (codes.float() - zw.float().reshape(shape)) * self.weight_scale.reshape(shape)
            self._w_float = self._float_layout(w)
            self._w_run = self._zw_run = self._col_sum = None
        else:
            w, zrun = codes, zw
            keep_packed = self.config["packed"] and isinstance(self, IntLinear)
            if keep_packed:
                w = self.weight_packed
            elif bool((zw != 0).any()):
                folded = codes.to(torch.int16) - zw.to(torch.int16).reshape(shape)
                if int(folded.min()) >= -128 and int(folded.max()) <= 127:
                    w, zrun = folded.to(torch.int8), torch.zeros_like(zw)
            self._w_run = w.contiguous()
            self._zw_run = zrun if bool((zrun != 0).any()) else None
            unpacked = codes if keep_packed else self._w_run
            self._col_sum = unpacked.reshape(unpacked.shape[0], -1).sum(1, dtype=torch.int32)
            self._w_float = None
        self._epilogue = self._make_epilogue()
        self._launch = None if self.input_q is None else self._make_launch()
        self._codes_launches = {}
        self._ready = True
        return self

    def codes_launch(self, q: ActQParams):
        """The prepared call that also writes this layer's fp32 output as codes of ``q`` in the
        same pass (``call_into`` returns both), or None (no prepared call, or an output that is
        not fp32). Made once per grid (the weight is packed again: plans call it once)."""
        if self._launch is None or self.output_q is not None or self.input_q is None:
            return None
        key = (q.scale, q.zero_point, q.qmin, q.qmax)
        hit = self._codes_launches.get(key)
        if hit is None:
            hit = self._make_launch(codes=ActQParams(*key))
            self._codes_launches[key] = hit
        return hit

    def _make_launch(self, codes=None):
        return None

    def _residual_dtype(self) -> Optional[torch.dtype]:
        """The dtype of the residual this layer's calls pass (codes of ``residual_q``, else fp32)."""
        if self.residual is None:
            return None
        return torch.float32 if self.residual_q is None else self.residual_q.dtype

    def _launched(self, x: torch.Tensor, residual: Optional[torch.Tensor], op: str):
        """The output of the pre-packed CPU launch, or None when the public op must run
        (not a CPU tensor, no C++ kernels, or another backend forced)."""
        if self._launch is None or x.device.type != "cpu" or not cpu_kernels_selected(op):
            return None
        if (residual is None) != (self.residual is None):
            self._epilogue_with(residual)  # raises the clear error
        return self._launch(x, residual)

    def _float_layout(self, w: torch.Tensor) -> torch.Tensor:
        return w.contiguous()

    def _make_epilogue(self) -> Optional[Epilogue]:
        if self.input_q is None:
            return None
        out = self.output_q
        ep = Epilogue(weight_scale=self.weight_scale, act_scale=self.input_q.scale,
                      act_zero_point=self.input_q.zero_point, weight_zero_point=self._zw_run,
                      weight_col_sum=self._col_sum, bias=self.bias, activation=self.config["activation"],
                      out_dtype=torch.float32 if out is None else out.dtype,
                      out_scale=None if out is None else out.scale,
                      out_zero_point=0 if out is None else out.zero_point,
                      quant_min=None if out is None else out.qmin, quant_max=None if out is None else out.qmax)
        if self.residual_q is not None:
            ep.residual_scale, ep.residual_zero_point = self.residual_q.scale, self.residual_q.zero_point
        return ep.validate()

    def _epilogue_with(self, residual: Optional[torch.Tensor]) -> Epilogue:
        if (residual is None) != (self.residual is None):
            raise ValueError(f"layer {self.config['name']!r} was converted "
                             f"{'without' if self.residual is None else 'with'} a fused residual add")
        ep = self._epilogue
        return ep if residual is None else dataclasses.replace(ep, residual=residual)

    def _float_epilogue(self, v: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
        """Steps 3-5 of the epilogue in PyTorch for float-input layers (``v`` already has the bias)."""
        if (residual is None) != (self.residual is None):
            raise ValueError(f"layer {self.config['name']!r}: residual given/missing against its config")
        if residual is not None:
            if self.residual_q is not None:
                residual = (residual.float() - self.residual_q.zero_point) * self.residual_q.scale
            v = v + residual
        return _activation(v, self.config["activation"])

    def _check_input(self, x: torch.Tensor) -> None:
        if self.input_q is None:
            if not x.dtype.is_floating_point:
                raise TypeError(f"layer {self.config['name']!r} takes a float input, got {x.dtype}")
        elif x.dtype != self.input_q.dtype:
            raise TypeError(f"layer {self.config['name']!r} takes {self.input_q.dtype} input codes, got {x.dtype}")

    def extra_repr(self) -> str:
        c = self.config
        fmt = lambda q: "float" if q is None else q.short()  # noqa: E731
        res = "" if c["residual"] is None else f", residual={'float' if self.residual_q is None else self.residual_q.short()}"
        return (f"{c['name']!r}, w{c['wbits']}{' packed' if c['packed'] else ''}, in={fmt(self.input_q)}, "
                f"out={fmt(self.output_q)}, act={c['activation']}{res}")


class IntConv2d(_IntLayer):
    """Integer conv: int8/uint8 NHWC ``[B, H, W, C]`` codes in (or float NCHW for a float-input
    layer) -> NHWC codes of the next layer's grid, or an fp32 value (returned as the logical
    NCHW view of NHWC memory). ``residual`` (when configured): a float logical NCHW tensor of the
    output's shape (or codes of ``config['residual']``'s grid in NHWC)."""

    def __init__(self, config: dict) -> None:
        kh, kw = config["kernel_size"]
        self.out_channels, self.in_channels, self.groups = config["out_channels"], config["in_channels"], config["groups"]
        cg = self.in_channels // self.groups
        super().__init__(config, (self.out_channels, kh, kw, cg), kh * kw * cg)
        self.stride, self.padding = tuple(config["stride"]), tuple(config["padding"])
        self.dilation, self.kernel_size = tuple(config["dilation"]), (kh, kw)

    def _weight_shape(self):
        kh, kw = self.kernel_size
        return (self.out_channels, kh, kw, self.in_channels // self.groups)

    def _float_layout(self, w):
        # OHWI memory viewed as OIHW is channels_last: with a channels_last input, F.conv2d runs
        # its NHWC kernel (faster than NCHW: docs/runtime.md) and writes NHWC, the program's float layout
        return w.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

    def _make_launch(self, codes=None):
        if self._w_run.device.type != "cpu":
            return None
        return make_launch("conv", self._w_run, self._epilogue, stride=self.stride, padding=self.padding,
                           dilation=self.dilation, groups=self.groups, pad_value=self.input_q.zero_point,
                           residual_dtype=self._residual_dtype(), codes=codes)

    @classmethod
    @torch.no_grad()
    def from_quant(cls, layer: nn.Module, name: str, *, output_q: Optional[ActQParams], activation: str = "none",
                   residual=None, bn: Optional[nn.BatchNorm2d] = None) -> "IntConv2d":
        """Convert a :class:`zsq_engine.quant.QuantConv2d` (plus an eval-mode BN folded into the
        epilogue). ``output_q``: the grid of the consumer's input (None: fp32 output);
        ``residual``: None, ``'float'`` or the :class:`ActQParams` of an integer residual."""
        from .qparams import act_qparams

        if layer.padding_mode != "zeros":
            raise ValueError(f"{name}: padding_mode={layer.padding_mode!r} is not supported (only 'zeros')")
        if isinstance(layer.padding, str):
            raise ValueError(f"{name}: string padding {layer.padding!r} is not supported; use explicit padding")
        codes, scale, zp, qmin, qmax = integer_weight(layer, name)
        bias = layer.bias.detach().float() if layer.bias is not None else None
        if bn is not None:
            scale, bias = _fold_bn_into_epilogue(scale, bias, bn, name)
        bits = int(qmax - qmin).bit_length()
        config = {
            "name": name, "in_channels": layer.in_channels, "out_channels": layer.out_channels,
            "kernel_size": list(layer.kernel_size), "stride": list(layer.stride), "padding": list(layer.padding),
            "dilation": list(layer.dilation), "groups": layer.groups, "wbits": bits, "packed": bits <= 4,
            "has_bias": bias is not None, "input": _as_dict(act_qparams(layer.act_quantizer, name)),
            "output": _as_dict(output_q), "residual": residual.to_dict() if isinstance(residual, ActQParams) else residual,
            "activation": activation,
        }
        mod = cls(config)
        mod._store(codes.permute(0, 2, 3, 1), zp, scale, qmin, qmax, bias)  # OIHW -> OHWI
        return mod.prepare()

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self._ready:
            self.prepare()
        self._check_input(x)
        if self.input_q is None:
            x = x.contiguous(memory_format=torch.channels_last)
            v = F.conv2d(x, self._w_float, self.bias, self.stride, self.padding, self.dilation, self.groups)
            v = self._float_epilogue(v, residual)
            if self.output_q is None:
                return v
            return quantize(v.permute(0, 2, 3, 1), self.output_q).contiguous()
        if residual is not None and residual.dtype.is_floating_point:
            residual = residual.permute(0, 2, 3, 1).contiguous()
        y = self._launched(x, residual, "qconv2d_nhwc")
        if y is not None:
            return nhwc_to_nchw(y) if self.output_q is None else y
        y = ops.qconv2d_nhwc(x, self._w_run, self.stride, self.padding, self.dilation, self.groups,
                             self._epilogue_with(residual), pad_value=self.input_q.zero_point)
        return nhwc_to_nchw(y) if self.output_q is None else y


class IntLinear(_IntLayer):
    """Integer linear: ``[M, K]`` codes (or float for a float-input layer) -> ``[M, N]`` codes of
    the consumer's grid or fp32 (logits)."""

    def __init__(self, config: dict) -> None:
        self.in_features, self.out_features = config["in_features"], config["out_features"]
        super().__init__(config, (self.out_features, self.in_features), self.in_features)

    def _weight_shape(self):
        return (self.out_features, self.in_features)

    def _make_launch(self, codes=None):
        if self._w_run.device.type != "cpu":
            return None
        return make_launch("linear", self._w_run, self._epilogue, w_packed=self.config["packed"],
                           k=self.in_features, residual_dtype=self._residual_dtype(), codes=codes)

    @classmethod
    @torch.no_grad()
    def from_quant(cls, layer: nn.Module, name: str, *, output_q: Optional[ActQParams], activation: str = "none",
                   residual=None) -> "IntLinear":
        """Convert a :class:`zsq_engine.quant.QuantLinear` (arguments as :meth:`IntConv2d.from_quant`)."""
        from .qparams import act_qparams

        codes, scale, zp, qmin, qmax = integer_weight(layer, name)
        bits = int(qmax - qmin).bit_length()
        config = {
            "name": name, "in_features": layer.in_features, "out_features": layer.out_features, "wbits": bits,
            "packed": bits <= 4, "has_bias": layer.bias is not None,
            "input": _as_dict(act_qparams(layer.act_quantizer, name)), "output": _as_dict(output_q),
            "residual": residual.to_dict() if isinstance(residual, ActQParams) else residual, "activation": activation,
        }
        mod = cls(config)
        mod._store(codes, zp, scale, qmin, qmax, layer.bias)
        return mod.prepare()

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self._ready:
            self.prepare()
        self._check_input(x)
        if x.dim() != 2:
            raise ValueError(f"layer {self.config['name']!r} takes [M, K] inputs, got shape {tuple(x.shape)}")
        if self.input_q is None:
            v = self._float_epilogue(F.linear(x, self._w_float, self.bias), residual)
            return v if self.output_q is None else quantize(v, self.output_q)
        y = self._launched(x, residual, "qgemm")
        if y is not None:
            return y
        if self.config["packed"]:
            return ops.qgemm(x, self._w_run, self._epilogue_with(residual), w_packed=True, k=self.in_features)
        return ops.qgemm(x, self._w_run, self._epilogue_with(residual))


def _as_dict(q: Optional[ActQParams]) -> Optional[dict]:
    return None if q is None else q.to_dict()


def _fold_bn_into_epilogue(scale: torch.Tensor, bias: Optional[torch.Tensor], bn: nn.Module, name: str):
    """BN(conv) = conv * f + (b - mean) * f + beta with f = gamma / sqrt(var + eps): the factor
    goes into the per-channel weight scale, the shift into the bias (fp64, rounded once)."""
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None:
        raise ValueError(f"{name}: the BatchNorm after it has no running statistics and cannot be folded")
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    f = gamma / torch.sqrt(var + bn.eps)
    b = bias.double() if bias is not None else torch.zeros_like(mean)
    return (scale.double() * f).float(), ((b - mean) * f + beta).float()
