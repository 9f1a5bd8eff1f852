"""The QDrop-mix op family: ``qdrop_mix`` (QDrop's random choice between quantized and float
activations). This file: the public function (checks, then the op); ``library.py``: the
torch.library op and its autograd; ``reference.py``: the oracle; ``cpu.py`` / ``triton.py``:
the kernels per backend (docs/architecture.md)."""
from __future__ import annotations

import torch

from ...opspec import checks
from ..dispatch import add_backend_modules
from ..fake_quant import check_qdrop_args
from . import library

add_backend_modules(f"{__name__}.cpu", f"{__name__}.triton")

__all__ = ["qdrop_mix"]


def qdrop_mix(x_q: torch.Tensor, x_fp: torch.Tensor, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    """QDrop: each element is ``x_q`` with probability ``p`` (QDrop's ``prob``), else ``x_fp``.

    The choice comes from the counter-based generator of :mod:`zsq_engine.ops.reference.rng`
    keyed by ``seed`` and the element's row-major index (+ ``offset``), so it is reproducible and
    identical on every backend. Gradients flow to whichever input was chosen.
    """
    checks.check_float_tensor("x_q", x_q)
    checks.check_float_tensor("x_fp", x_fp)
    if x_q.shape != x_fp.shape or x_q.dtype != x_fp.dtype:
        raise ValueError(f"x_q and x_fp must have the same shape and dtype, got {tuple(x_q.shape)} "
                         f"{x_q.dtype} and {tuple(x_fp.shape)} {x_fp.dtype}")
    checks.check_same_device("x_q", x_q, "x_fp", x_fp)
    check_qdrop_args(p, seed, offset)
    return library.qdrop_mix(x_q, x_fp, float(p), seed, offset)
