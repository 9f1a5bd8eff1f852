"""Quantized-model files written by ``zsq quantize``.

Format (``torch.save``, read with ``weights_only=True``)::

    {"format": 1, "state_dict": {...}, "meta": {"model", "wbits", "abits", "first_last_bits",
     "method", "preset", "seed", "data", "accuracy", ...}}

The state dict is that of ``quantize_model(get_model(meta["model"]), wbits, abits,
first_last_bits=...)`` after reconstruction: weights are the dequantized integer-grid values,
every quantizer holds its (scale, zero_point).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..utils import FileFormatError, load_torch_file, save_torch_atomic

__all__ = ["FORMAT_VERSION", "save_quantized", "load_quantized"]

FORMAT_VERSION = 1


def save_quantized(path, qmodel: nn.Module, meta: dict) -> None:
    """Write ``{format, state_dict (CPU tensors), meta}`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in qmodel.state_dict().items()}
    save_torch_atomic({"format": FORMAT_VERSION, "state_dict": state, "meta": dict(meta)}, path)


def load_quantized(path, device="cpu"):
    """``(qmodel, meta)`` from a file of :func:`save_quantized` (model rebuilt from the registry)."""
    from ..models import get_model
    from ..quant import quantize_model

    path = Path(path)
    hint = "pass a file written by `zsq quantize` or `zsq qat`"
    obj = load_torch_file(path, "zsq quantized model", hint)
    if isinstance(obj, dict) and obj.get("format") == "zsq-int-model":
        raise FileFormatError(path, "is already an integer model (from `zsq convert`), not a fake-quant model", hint)
    if not isinstance(obj, dict) or not {"state_dict", "meta"} <= set(obj) or not isinstance(obj["meta"], dict):
        raise FileFormatError(path, "is not a zsq quantized model (expected keys state_dict, meta)", hint)
    meta = obj["meta"]
    missing = [k for k in ("model", "wbits", "abits") if k not in meta]
    if missing:
        raise FileFormatError(path, f"is a quantized model without {', '.join(missing)} in its meta", hint)
    try:
        model = get_model(meta["model"], pretrained=False)
        if meta.get("relu6_as_relu"):  # DFQ equalisation replaced these ReLU6s (synth_free.dfq)
            from ..synth_free import replace_relu6
            replace_relu6(model, meta["relu6_as_relu"])
        state = obj["state_dict"]
        if any(k.endswith(".upper") for k in state):  # DFQ's exact ReLU6 policy: per-channel clips
            from ..synth_free import restore_channel_clamps
            restore_channel_clamps(model, state)
        # the first-layer policy: the first layer's input is quantized (8-bit input) exactly when
        # the file holds an input quantizer for it (meta "quantize_first_input" also says so)
        first_input = bool(meta.get("quantize_first_input")) or f"{_first_layer(model)}.act_quantizer.scale" in state
        qmodel = quantize_model(model, meta["wbits"], meta["abits"], first_last_bits=meta.get("first_last_bits", 8),
                                weight_method="minmax", quantize_first_input=first_input)
        if meta.get("layer_bits"):  # per-layer bits (quant.bit_allocation)
            from ..quant.bit_allocation import apply_bit_plan
            apply_bit_plan(qmodel, {k: tuple(v) for k, v in meta["layer_bits"].items()}, weight_method="minmax")
        qmodel.load_state_dict(state, strict=True)
    except (ValueError, TypeError, RuntimeError) as exc:
        why = str(exc).splitlines()[0][:300]
        raise FileFormatError(path, f"does not hold a usable {meta['model']!r} W{meta['wbits']}A{meta['abits']} "
                                    f"model ({why})", hint) from None
    return qmodel.to(device).eval(), meta


def _first_layer(model: nn.Module) -> str:
    """The layer whose input ``quantize_model`` leaves float by default (its first in call order)."""
    from ..quant.model import float_layers_in_call_order

    return float_layers_in_call_order(model)[0][0]
