"""The student: a fake-quantized copy of the teacher with learnable (LSQ/LSQ+) ranges.

BN is folded into the convolutions before quantization, so the student has no BN layer whose
batch statistics could drift on synthetic data (HAST keeps student BN in eval mode for the same
reason) and the trained student converts directly to the integer runtime. Weights are
per-channel asymmetric, activations per-tensor asymmetric, first and last layer 8-bit (input of
the first layer float), as everywhere in :mod:`zsq_engine.quant`. All quantizers use the fused
``lsq_fake_quant`` op: the ranges are trained with the weights and nothing syncs with the host.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from torch import nn

from ..quant import quant_layers, quantize_model
from ..quant.quantizer import UniformQuantizer

__all__ = ["build_student", "split_student_params", "act_quantizers"]


def build_student(teacher: nn.Module, wbits: int, abits: int, first_last_bits: Optional[int] = 8,
                  weight_method: str = "mse") -> nn.Module:
    """Quantized deep copy of ``teacher`` (unchanged), every quantizer learnable.

    Weight ranges are calibrated here (``weight_method``); activation ranges are not (the
    trainer calibrates them on synthetic batches).
    """
    student = quantize_model(teacher, wbits, abits, first_last_bits=first_last_bits, weight_method=weight_method,
                             act_method="minmax", fold_bn=True)
    for m in student.modules():
        if isinstance(m, UniformQuantizer):
            m.set_learnable(True)
    for p in student.parameters():
        p.requires_grad_(True)  # the teacher may arrive frozen; its copy must train
    return student.train()


def act_quantizers(student: nn.Module) -> List[UniformQuantizer]:
    return [layer.act_quantizer for _, layer in quant_layers(student) if layer.act_quantizer is not None]


def split_student_params(student: nn.Module) -> Tuple[list, list]:
    """``(weights and biases, quantizer scales / zero points)``: two optimiser groups."""
    quant_ids = set()
    quant = []
    for m in student.modules():
        if isinstance(m, UniformQuantizer):
            for p in m.parameters(recurse=False):
                if id(p) not in quant_ids:
                    quant_ids.add(id(p))
                    quant.append(p)
    weights = [p for p in student.parameters() if id(p) not in quant_ids]
    return weights, quant
