"""Whole-run progress and ETA of a block reconstruction.

Units differ in cost by an order of magnitude (an early unit at full resolution against a late
one at 7x7), so counting units would make the ETA swing. Each unit is weighed by the work of one
forward of its conv / linear layers (any module with a 2-D or 4-D ``weight``) on one sample (multiply-adds plus a per-output-element term for
the elementwise fake-quant work around them); tqdm then turns the work done so far and its elapsed
time into the remaining time.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

# One output element of a quantized layer costs about this many multiply-adds in fake-quant,
# bias, activation and the backward of those (what makes depthwise layers slow on a CPU).
ELEMENTWISE_WEIGHT = 16.0


@torch.no_grad()
def unit_work(model: nn.Module, names: List[str], sample: torch.Tensor) -> Dict[str, float]:
    """Relative work of one iteration of each named unit, from one forward of ``sample``."""
    work = {n: 0.0 for n in names}
    handles = []

    def leaf_hook(unit_name, macs_per_output):
        def hook(_module, _inputs, output):
            work[unit_name] += float(output.numel()) * (macs_per_output + ELEMENTWISE_WEIGHT)
        return hook

    for n in names:
        for leaf in model.get_submodule(n).modules():
            weight = getattr(leaf, "weight", None)
            # conv [O, I/g, kh, kw] and linear [O, I], float or fake-quant wrapper alike
            if isinstance(weight, torch.Tensor) and weight.dim() in (2, 4):
                handles.append(leaf.register_forward_hook(leaf_hook(n, weight[0].numel())))
    try:
        model(sample)
    finally:
        for h in handles:
            h.remove()
    # a unit with no conv / linear still takes its iterations: give it the smallest positive weight
    floor = min((w for w in work.values() if w > 0), default=1.0)
    return {n: (w if w > 0 else floor) for n, w in work.items()}


class RunProgress:
    """An outer bar over the units of a run, advanced by each unit's work (``None`` when disabled)."""

    def __init__(self, work: Dict[str, float], done_units: List[str], desc: str, enabled: bool):
        self._work = work
        self._bar = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        total = sum(work.values())
        self._bar = tqdm(total=total, initial=sum(work[n] for n in done_units), desc=desc, leave=False, dynamic_ncols=True,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} run")

    def unit_done(self, name: str) -> None:
        if self._bar is not None:
            self._bar.update(self._work[name])

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    @property
    def bar(self) -> Optional[object]:
        return self._bar
