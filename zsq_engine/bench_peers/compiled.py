"""``torch.compile`` contenders: one static-shape Inductor compile per input shape and thread count.

Freezing is on while a shape compiles (the setting torchao documents for its x86 int8 flow): weights
become constants that Inductor pre-packs for oneDNN (``onednn.qconv_prepack``), and the float model
gets the same treatment so that the two compiled rows differ only in the arithmetic. It is set
through ``torch._inductor.config.patch`` around the compiling call: passing it as
``torch.compile(options={"freezing": True})`` does not reach the int8 pattern passes in torch
2.13 / torchao 0.18 (the compile fails in fake-tensor propagation on ``onednn.qconv_prepack``).
``dynamic=False``: each timed batch size gets its own static kernels. Inductor bakes
``torch.get_num_threads()`` into its CPU kernels, so a contender is made anew (after
``torch._dynamo.reset()``) for every thread count.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from .status import PeerUnavailable

__all__ = ["inductor"]


def inductor(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module`` compiled by Inductor with freezing (compiled on the first call of each input shape)."""
    try:
        import torch._inductor.config as inductor_config

        compiled = torch.compile(module, dynamic=False)
    except Exception as exc:  # noqa: BLE001 - no compiler backend in this torch build
        raise PeerUnavailable(f"torch.compile is not available ({type(exc).__name__}: {exc})") from exc
    compiled_for = set()

    def run(x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.stride(), x.dtype)
        with torch.no_grad():
            if key in compiled_for:  # timed calls: no config patching on the hot path
                return compiled(x)
            with inductor_config.patch(freezing=True), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Inductor's own lowering warnings, once per compile
                out = compiled(x)
            compiled_for.add(key)
            return out
    return run
