"""The int4 packing family: ``pack_int4`` / ``unpack_int4`` (two 4-bit values per byte, the format
of :mod:`zsq_engine.opspec.int4`). This file: the public functions (checks, then the op);
``library.py``: the torch.library ops; ``reference.py``: the oracle; ``cpu.py`` / ``cuda.py``:
the kernels per backend (docs/architecture.md)."""
from __future__ import annotations

import torch

from ...opspec import checks
from ..dispatch import add_backend_modules, dispatch
from ..schema import compiling
from . import library

add_backend_modules(f"{__name__}.cpu", f"{__name__}.cuda")

__all__ = ["pack_int4", "unpack_int4"]


def pack_int4(x: torch.Tensor) -> torch.Tensor:
    """Pack int4 values two per byte along the last dimension.

    ``x``: int8 with values in [-8, 7] (signed int4) or uint8 in [0, 15] (unsigned). Returns
    uint8 with last dimension ``(K + 1) // 2``: element ``2i`` in the low nibble of byte ``i``,
    ``2i + 1`` in the high nibble, two's-complement nibbles, odd K padded with 0. The range check
    reads the values (a host sync on CUDA): packing is a conversion step, not a training hot path.
    Under torch.compile the values are not read (a data-dependent check would break the graph).
    """
    checks.check_tensor("x", x, (torch.int8, torch.uint8))
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    if x.numel() and not compiling():
        lo, hi = (-8, 7) if x.dtype == torch.int8 else (0, 15)
        xmin, xmax = torch.aminmax(x)
        if int(xmin) < lo or int(xmax) > hi:
            raise ValueError(f"x holds values in [{int(xmin)}, {int(xmax)}] but int4 packing of {x.dtype} "
                             f"needs [{lo}, {hi}]; quantize to 4 bits first")
    if compiling():
        return library.PACK_INT4(x)
    return dispatch("pack_int4", x.device)(x)


def unpack_int4(packed: torch.Tensor, k: int, signed: bool = True) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: int8 (signed) or uint8 (unsigned) with last dimension ``k``."""
    checks.check_tensor("packed", packed, (torch.uint8,))
    if packed.dim() == 0:
        raise ValueError("packed must have at least one dimension")
    if isinstance(k, bool) or not isinstance(k, int) or (k + 1) // 2 != packed.shape[-1] or k < 1:
        raise ValueError(f"k={k!r} does not match packed.shape[-1]={packed.shape[-1]} "
                         f"(expected k in {{{2 * packed.shape[-1] - 1}, {2 * packed.shape[-1]}}})")
    if compiling():
        return library.UNPACK_INT4(packed, k, bool(signed))
    return dispatch("unpack_int4", packed.device)(packed, k, bool(signed))
