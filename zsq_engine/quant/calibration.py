"""Range calibration: observers (min/max, percentile, MSE) that turn tensors seen over several
batches into (scale, zero_point), and weight calibration. Details: docs/quant.md.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .quantizer import SCALE_EPS, QuantSpec, UniformQuantizer

__all__ = [
    "Observer", "MinMaxObserver", "PercentileObserver", "MSEObserver", "OBSERVERS", "make_observer",
    "qparams_from_minmax", "calibrate_weight", "WEIGHT_METHODS", "ACT_METHODS",
]

WEIGHT_METHODS = ("mse", "minmax")
ACT_METHODS = ("minmax", "percentile", "mse")


def _ops():
    from zsq_engine import ops
    return ops


def _rows(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """View ``x`` as ``[C, N]``: C = channels along the spec's axis, or 1 for per-tensor."""
    axis = spec.resolve_axis(x.dim())
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def qparams_from_minmax(spec: QuantSpec, min_val: torch.Tensor, max_val: torch.Tensor
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) float32 covering ``[min_val, max_val]`` (widened to contain 0)."""
    scale, zp = _ops().minmax_qparams(min_val.float(), max_val.float(), spec.quant_min, spec.quant_max,
                                      symmetric=spec.symmetric, eps=SCALE_EPS)
    return scale.clamp_min(SCALE_EPS), torch.round(zp).clamp(spec.quant_min, spec.quant_max)


class Observer:
    """Base class. Subclasses implement ``_update(rows)`` with ``rows`` shaped ``[C, N]``."""

    def __init__(self, spec: QuantSpec) -> None:
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        self.spec = spec
        self.num_batches = 0
        self.num_channels: Optional[int] = None

    def reset(self) -> None:
        self.num_batches = 0
        self.num_channels = None

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Accumulate one batch. ``x``: any float tensor; per-channel needs ``x.dim() > axis``."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x))}")
        if x.numel() == 0:
            return
        rows = _rows(x.detach(), self.spec)
        if self.num_channels is not None and rows.shape[0] != self.num_channels:
            raise ValueError(f"observer saw {self.num_channels} channels before, now {rows.shape[0]} "
                             f"(x.shape={tuple(x.shape)})")
        self.num_channels = rows.shape[0]
        self._update(rows)
        self.num_batches += 1

    def _update(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def compute_qparams(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point), float32 ``[C]`` (``[1]`` per-tensor); zero_point holds integers."""
        if self.num_batches == 0:
            raise RuntimeError(f"{type(self).__name__} has seen no data; call update() with at least one batch")
        return self._compute()

    def _compute(self) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.short()}, batches={self.num_batches})"


class MinMaxObserver(Observer):
    """Running min / max over all batches (per channel or global)."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        self.min_val: Optional[torch.Tensor] = None
        self.max_val: Optional[torch.Tensor] = None

    def reset(self) -> None:
        super().reset()
        self.min_val = self.max_val = None

    def _update(self, rows: torch.Tensor) -> None:
        mn, mx = torch.aminmax(rows, dim=1)
        mn, mx = mn.float(), mx.float()
        if self.min_val is None:
            self.min_val, self.max_val = mn, mx
        else:
            self.min_val = torch.minimum(self.min_val, mn)
            self.max_val = torch.maximum(self.max_val, mx)

    def _compute(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return qparams_from_minmax(self.spec, self.min_val, self.max_val)


class _ReservoirObserver(Observer):
    """Keeps (a uniform subsample of) the observed values, ``[C, N]`` float32 on the device."""

    def __init__(self, spec: QuantSpec, max_samples_per_batch: int, max_samples: int, seed: int) -> None:
        super().__init__(spec)
        for name, v in (("max_samples_per_batch", max_samples_per_batch), ("max_samples", max_samples)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.max_samples_per_batch = max_samples_per_batch
        self.max_samples = max_samples
        self.seed = seed
        self._chunks: List[torch.Tensor] = []
        self._generator: Optional[torch.Generator] = None

    def reset(self) -> None:
        super().reset()
        self._chunks = []
        self._generator = None

    def _gen(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
        return self._generator

    def _subsample(self, rows: torch.Tensor, cols: int) -> torch.Tensor:
        # With replacement: O(cols) memory however large the activation is; the same columns
        # for every channel (per-channel rows stay aligned, which does not matter here).
        idx = torch.randint(rows.shape[1], (cols,), device=rows.device, generator=self._gen(rows.device))
        return rows.index_select(1, idx)

    def _update(self, rows: torch.Tensor) -> None:
        if rows.shape[1] > self.max_samples_per_batch:
            rows = self._subsample(rows, self.max_samples_per_batch)
            self._chunks.append(rows.float())
        else:
            self._chunks.append(rows.to(torch.float32, copy=True))

    def samples(self) -> torch.Tensor:
        """All kept values, ``[C, N]`` float32 (thinned to ``max_samples`` in total)."""
        rows = torch.cat(self._chunks, dim=1) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks = [rows]
        cols = max(1, self.max_samples // rows.shape[0])
        if rows.shape[1] > cols:
            rows = self._subsample(rows, cols)
        return rows


class PercentileObserver(_ReservoirObserver):
    """Clip the range at the ``percentile`` quantile (and ``100 - percentile`` below).

    ``max_samples`` is capped at 2^24 values, torch.quantile's limit.
    """

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, *, max_samples_per_batch: int = 2 ** 16,
                 max_samples: int = 2 ** 22, seed: int = 0) -> None:
        if not 50.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        super().__init__(spec, max_samples_per_batch, min(max_samples, 2 ** 24), seed)
        self.percentile = float(percentile)

    def _compute(self) -> Tuple[torch.Tensor, torch.Tensor]:
        rows = self.samples()
        q = self.percentile / 100.0
        if self.spec.symmetric:
            hi = torch.quantile(rows.abs(), q, dim=1)
            lo = -hi
        else:
            qs = torch.tensor([1.0 - q, q], dtype=rows.dtype, device=rows.device)
            lo, hi = torch.quantile(rows, qs, dim=1)
        return qparams_from_minmax(self.spec, lo, hi)


class MSEObserver(_ReservoirObserver):
    """Lp-optimal clipping over the kept values via ``ops.scale_search``."""

    def __init__(self, spec: QuantSpec, *, p: float = 2.4, num_candidates: int = 80,
                 max_samples_per_batch: int = 2 ** 16, max_samples: int = 2 ** 18, seed: int = 0) -> None:
        super().__init__(spec, max_samples_per_batch, max_samples, seed)
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or not 1 <= num_candidates <= 100:
            raise ValueError(f"num_candidates must be an int in 1..100, got {num_candidates!r}")
        self.p = float(p)
        self.num_candidates = num_candidates

    def _compute(self) -> Tuple[torch.Tensor, torch.Tensor]:
        rows = self.samples()
        axis = 0 if self.spec.per_channel else None
        scale, zp = _ops().scale_search(rows, self.spec.quant_min, self.spec.quant_max, axis=axis,
                                        num_candidates=self.num_candidates, p=self.p,
                                        symmetric=self.spec.symmetric)
        return scale.float().reshape(-1).clamp_min(SCALE_EPS), torch.round(zp.float().reshape(-1)).clamp(
            self.spec.quant_min, self.spec.quant_max)


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver}


def make_observer(method: str, spec: QuantSpec, **kwargs) -> Observer:
    """Observer by name: 'minmax', 'percentile' (kwargs: percentile, ...), 'mse' (p, num_candidates, ...)."""
    if method not in OBSERVERS:
        raise ValueError(f"method must be one of {sorted(OBSERVERS)}, got {method!r}")
    return OBSERVERS[method](spec, **kwargs)


@torch.no_grad()
def calibrate_weight(quantizer: UniformQuantizer, weight: torch.Tensor, method: str = "mse", *,
                     p: float = 2.4, num_candidates: int = 80) -> UniformQuantizer:
    """Set ``quantizer``'s (scale, zero_point) from the whole tensor ``weight``.

    Args:
        method: 'mse' (``ops.scale_search``, Lp clipping search with ``p`` / ``num_candidates``)
            or 'minmax'.
    Returns the quantizer (now calibrated).
    """
    if method not in WEIGHT_METHODS:
        raise ValueError(f"method must be one of {WEIGHT_METHODS}, got {method!r}")
    spec = quantizer.spec
    axis = spec.resolve_axis(weight.dim())
    w = weight.detach()
    if method == "minmax":
        mn, mx = torch.aminmax(_rows(w, spec), dim=1)
        scale, zp = qparams_from_minmax(spec, mn, mx)
    else:
        scale, zp = _ops().scale_search(w, spec.quant_min, spec.quant_max, axis=axis,
                                        num_candidates=num_candidates, p=p, symmetric=spec.symmetric)
    return quantizer.set_qparams(scale.reshape(-1), zp.reshape(-1))
