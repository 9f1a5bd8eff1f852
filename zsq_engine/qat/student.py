"""The student: a fake-quantized copy of the teacher with learnable (LSQ/LSQ+) ranges.

BN is folded into the convolutions before quantization, so the student has no BN layer whose
batch statistics could drift on synthetic data (HAST keeps student BN in eval mode for the same
reason) and the trained student converts directly to the integer runtime. Weights are
per-channel asymmetric, activations per-tensor asymmetric, first and last layer 8-bit (input of
the first layer float), as everywhere in :mod:`zsq_engine.quant`. All quantizers use the fused
``lsq_fake_quant`` op: the ranges are trained with the weights and nothing syncs with the host.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..quant import quant_layers, quantize_model
from ..quant.bit_allocation import apply_bit_plan
from ..quant.quantizer import SCALE_EPS, UniformQuantizer

__all__ = ["build_student", "student_param_groups", "rescale_quant_lrs", "act_quantizers"]


def build_student(teacher: nn.Module, wbits: int, abits: int, first_last_bits: Optional[int] = 8,
                  weight_method: str = "mse", layer_bits: Optional[Dict[str, Tuple[int, Optional[int]]]] = None
                  ) -> nn.Module:
    """Quantized deep copy of ``teacher`` (unchanged), every quantizer learnable.

    Weight ranges are calibrated here (``weight_method``); activation ranges are not (the
    trainer calibrates them on synthetic batches). ``layer_bits``: per-layer (weight, input)
    bits of a mixed-precision plan (:mod:`zsq_engine.quant.bit_allocation`) over the uniform ones.
    """
    student = quantize_model(teacher, wbits, abits, first_last_bits=first_last_bits, weight_method=weight_method,
                             act_method="minmax", fold_bn=True)
    if layer_bits:
        apply_bit_plan(student, layer_bits, weight_method=weight_method)
    for m in student.modules():
        if isinstance(m, UniformQuantizer):
            m.set_learnable(True)
    for p in student.parameters():
        p.requires_grad_(True)  # the teacher may arrive frozen; its copy must train
    return student.train()


def act_quantizers(student: nn.Module) -> List[UniformQuantizer]:
    return [layer.act_quantizer for _, layer in quant_layers(student) if layer.act_quantizer is not None]


def student_param_groups(student: nn.Module, lr: float, lr_quant: float, weight_decay: float) -> List[dict]:
    """Optimiser groups: weights and biases at ``lr`` with weight decay, then one group per
    quantizer scale and one per zero point, without weight decay (it would shrink the ranges).

    Scale groups carry ``"quant": "scale"``: their lr is *relative*, ``lr_quant`` times the
    scale's median magnitude, set by :func:`rescale_quant_lrs` once the ranges are calibrated.
    Adam's step is about ``lr`` whatever the gradient's size, and the scales of one model span
    three orders of magnitude (8-bit first-layer weights ~1e-4, 3-bit inner weights ~1e-1): one
    absolute lr either freezes the large ones or wipes out the small ones within a few steps.
    Zero points live on the integer grid, so their lr ``lr_quant`` is in grid steps.
    """
    quant_ids = set()
    groups = []
    for m in student.modules():
        if not isinstance(m, UniformQuantizer):
            continue
        for name, p in m.named_parameters(recurse=False):
            if id(p) in quant_ids:
                continue
            quant_ids.add(id(p))
            groups.append({"params": [p], "lr": lr_quant, "weight_decay": 0.0,
                           "quant": "scale" if name == "scale" else "zero_point"})
    weights = [p for p in student.parameters() if id(p) not in quant_ids]
    return [{"params": weights, "lr": lr, "weight_decay": weight_decay, "quant": ""}] + groups


@torch.no_grad()
def rescale_quant_lrs(optimizer: torch.optim.Optimizer, lr_quant: float, scheduler=None) -> None:
    """Set every scale group's lr to ``lr_quant * median|scale|`` (see :func:`student_param_groups`);
    also the scheduler's base lrs so the schedule multiplies the new values. One host read per
    quantizer, once per run (after calibration), never in the training loop."""
    for i, group in enumerate(optimizer.param_groups):
        if group.get("quant") != "scale":
            continue
        lr = lr_quant * float(group["params"][0].detach().abs().median().clamp_min(SCALE_EPS))
        group["lr"] = group["initial_lr"] = lr
        if scheduler is not None:
            scheduler.base_lrs[i] = lr
