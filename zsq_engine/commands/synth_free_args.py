"""The synthesis-free options shared by quantize / qat / eval: ``--equalize`` (DFQ),
``--bits-budget`` (mixed precision), ``--weight-rounding`` / ``--rounding-init`` (SQuant)."""
from __future__ import annotations

import argparse
from typing import Optional, Tuple

import torch
from torch import nn


def add_equalize_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--equalize", action="store_true",
                   help="DFQ first (no data): cross-layer equalisation + high-bias absorption; pairs through "
                        "a ReLU6 are equalised only where the BN statistics say the clip is inactive (the "
                        "ReLU6 then becomes a ReLU, which the integer runtime and saved files support)")


def add_bits_budget_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bits-budget", type=float, default=None, metavar="B",
                   help="mixed precision: per-layer weight/activation bits chosen from KL sensitivities on the "
                        "calibration images, average weight bits (by parameters) and activation bits (by "
                        "elements) at most B; every layer, first and last included, is allocated")


def add_weight_rounding_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weight-rounding", choices=("nearest", "squant"), default="nearest",
                   help="naive PTQ weight rounding: nearest (default) or squant (SQuant's data-free flips of "
                        "the rounding, element / kernel / channel-wise, no data)")


def add_rounding_init_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounding-init", choices=("nearest", "squant"), default="nearest",
                   help="where AdaRound's rounding variables start: nearest (the fractional part, default) or "
                        "squant (the SQuant rounding decision)")


def maybe_equalize(args: argparse.Namespace, model: nn.Module) -> Tuple[nn.Module, dict]:
    """``(model, meta)``: ``dfq(model)`` and what to record when ``--equalize``, else unchanged."""
    if not getattr(args, "equalize", False):
        return model, {}
    from zsq_engine.synth_free import dfq, find_equalization_pairs, relu6_replaced

    candidates = find_equalization_pairs(model) or []
    equalized, pairs = dfq(model, relu6="auto", return_pairs=True)
    left = len(candidates) - len(pairs)
    print(f"--equalize: {len(pairs)} of {len(candidates)} conv pairs equalised"
          + (f"; {left} through a ReLU6 whose clip the BN statistics say is active were left as they are "
             "(the exact per-channel-clip policy is synth_free.dfq(relu6='clamp'), not wired to this flag)"
             if left else ""), flush=True)
    return equalized, {"equalize": "dfq", "relu6_as_relu": relu6_replaced(model, equalized),
                       "equalized_pairs": len(pairs)}


def maybe_plan_bits(args: argparse.Namespace, model: nn.Module, images: torch.Tensor) -> Tuple[Optional[dict], dict]:
    """``(layer_bits or None, meta)`` for ``--bits-budget``; prints the plan."""
    budget = getattr(args, "bits_budget", None)
    if budget is None:
        return None, {}
    from zsq_engine.quant.bit_allocation import format_plan, plan_for_budget

    if budget <= 0:
        raise ValueError(f"--bits-budget must be a positive number of bits, got {budget}")
    plan = plan_for_budget(model, images, budget, weight_method="mse", act_method="mse")
    print(f"per-layer bits for an average of {budget:g}:\n{format_plan(plan)}", flush=True)
    return plan, {"layer_bits": plan, "bits_budget": budget}
