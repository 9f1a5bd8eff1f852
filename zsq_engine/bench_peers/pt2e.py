"""torchao's PT2E static int8 flow for x86: export, X86InductorQuantizer, calibrate, convert.

The result is an exported graph with quantize / dequantize pairs around float ops; Inductor
(``compiled.inductor``) pattern-matches those into oneDNN int8 convs / linears.
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from .status import PeerUnavailable

__all__ = ["pt2e_x86_int8"]


def _pt2e_api():
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except Exception as exc:  # noqa: BLE001 - ImportError, or a torchao built for another torch
        raise PeerUnavailable(f"torchao PT2E is not importable ({type(exc).__name__}: {exc}); "
                              f"pip install 'zsq_engine[bench]' (torchao)") from exc
    return prepare_pt2e, convert_pt2e, xiq


@torch.no_grad()
def pt2e_x86_int8(model: nn.Module, calib_batches: Iterable[torch.Tensor]) -> nn.Module:
    """The PT2E int8 version of float ``model`` (eval mode, CPU), calibrated on ``calib_batches``
    (float NCHW tensors). Raises PeerUnavailable without torchao or when export fails."""
    prepare_pt2e, convert_pt2e, xiq = _pt2e_api()
    batches = [b.detach().cpu().float() for b in calib_batches]
    if not batches:
        raise ValueError("calib_batches is empty: PT2E needs images to calibrate its observers")
    # a batch of 2 keeps the batch dimension symbolic (a size-1 example would be specialised)
    example = torch.cat(batches)[:2]
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    float_model = copy.deepcopy(model).cpu().eval()
    try:
        exported = torch.export.export(float_model, (example,),
                                       dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()
    except Exception as exc:  # noqa: BLE001 - tracing failures of user models get one message
        raise PeerUnavailable(f"torch.export could not trace the model ({type(exc).__name__}: {exc})") from exc
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    for b in batches:
        prepared(b)
    return convert_pt2e(prepared)
