"""Method-specific objectives on top of the shared loop (:mod:`zsq_engine.qat.loop`).

Each method object knows how to compute

* ``generator_loss(images, labels)`` - ``(loss, teacher_logits)``: the generator's objective
  (GDFQ: teacher CE + BN statistics; ZAQ: minus the teacher/student discrepancy minus the
  activation regulariser) and the teacher's logits on ``images`` (detached), which a method
  with ``student_reuses_generator_batch`` hands to its next student step. The loop
  differentiates the loss with respect to the generator parameters only
  (``torch.autograd.grad``), so neither the student nor the teacher collects gradients there;
* ``student_backward(images, labels, teacher_logits=None)`` - the student's loss on a batch
  that is already detached from the generator (``teacher_logits``: the teacher's output on it,
  when already known); it calls ``backward()`` itself (HAST needs two passes) and returns the
  detached loss for logging.

The teacher is frozen by the loop (eval mode, ``requires_grad=False``); teacher outputs that
only serve as targets are computed under ``no_grad``. Methods that do not read the teacher's BN
inputs (ZAQ, HAST) get a BN-folded copy of it (the same function with fewer operations).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..utils import BNInputRecorder
from .config import QATConfig
from .losses import feature_alignment, kd_kl, relation_loss
from .taps import FeatureTaps, block_names, stage_names

__all__ = ["QATMethod", "GDFQMethod", "ZAQMethod", "HASTMethod", "METHOD_CLASSES"]


class QATMethod:
    name = ""
    uses_generator = True
    conditional = False
    generator_needs_student = False  # the generator objective runs the student (adversarial)
    # GDFQ's code trains the student on the batch of the generator step just taken (detached) with
    # the teacher logits of that step: no second generator or teacher forward per iteration
    student_reuses_generator_batch = False
    # the objectives read the teacher's BN inputs (GDFQ's BN statistics); otherwise the trainer
    # hands the method a copy of the teacher with BN folded into the convolutions
    reads_teacher_bn = False

    def __init__(self, cfg: QATConfig, teacher: nn.Module, student: nn.Module,
                 feature_layers: Optional[List[str]] = None) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.student = student
        self.feature_layers = feature_layers

    def generator_loss(self, images: torch.Tensor,
                       labels: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{self.name} has no generator")

    def student_backward(self, images: torch.Tensor, labels: Optional[torch.Tensor],
                         teacher_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError


def _resolve_layers(model: nn.Module, given: Optional[List[str]], finder, what: str) -> List[str]:
    names = list(given) if given else finder(model)
    if not names:
        raise ValueError(f"cannot find the {what} of {type(model).__name__} automatically; pass "
                         f"feature_layers=[module names]")
    return names


class GDFQMethod(QATMethod):
    """Generator: ``CE(teacher(G(z, y)), y) + bns_weight * BNS`` ('gdfq' BN variant). Student:
    ``kd_weight * T^2 KL_T(s || t) + ce_weight * CE(s, y)`` on generated batches."""

    name = "gdfq"
    conditional = True
    student_reuses_generator_batch = True
    reads_teacher_bn = True

    def generator_loss(self, images, labels):
        with BNInputRecorder(self.teacher) as rec:
            logits = self.teacher(images)
            bns = ops.bn_stat_loss(*rec.loss_inputs(), variant="gdfq")
        return F.cross_entropy(logits, labels) + self.cfg.bns_weight * bns, logits.detach()

    def student_backward(self, images, labels, teacher_logits=None):
        t_logits = teacher_logits
        if t_logits is None:
            with torch.no_grad():
                t_logits = self.teacher(images)
        s_logits = self.student(images)
        loss = self.cfg.kd_weight * kd_kl(s_logits, t_logits, self.cfg.temperature)
        if self.cfg.ce_weight > 0:
            loss = loss + self.cfg.ce_weight * F.cross_entropy(s_logits, labels)
        loss.backward()
        return loss.detach()


class ZAQMethod(QATMethod):
    """Two-level discrepancy ``D = L1(s_logits, t_logits) + alpha * relation(stage features)``;
    the student minimises D, the generator maximises ``D + beta * mean|teacher last stage|``."""

    name = "zaq"
    generator_needs_student = True

    def __init__(self, cfg, teacher, student, feature_layers=None) -> None:
        super().__init__(cfg, teacher, student, feature_layers)
        self.stages = _resolve_layers(teacher, feature_layers, stage_names, "stages (layer1, layer2, ...)")

    def _discrepancy(self, images, teacher_grad: bool):
        with FeatureTaps(self.teacher, self.stages) as tt, FeatureTaps(self.student, self.stages) as st:
            with torch.set_grad_enabled(teacher_grad and torch.is_grad_enabled()):
                t_logits = self.teacher(images)
                t_feats = tt.features()
            s_logits = self.student(images)
            s_feats = st.features()
        d = F.l1_loss(s_logits, t_logits)
        if self.cfg.relation_weight > 0:
            d = d + self.cfg.relation_weight * relation_loss(s_feats, t_feats)
        return d, t_feats, t_logits

    def generator_loss(self, images, labels):
        d, t_feats, t_logits = self._discrepancy(images, teacher_grad=True)
        return -d - self.cfg.act_weight * t_feats[-1].abs().mean(), t_logits.detach()

    def student_backward(self, images, labels, teacher_logits=None):
        d, _, _ = self._discrepancy(images, teacher_grad=False)
        d.backward()
        return d.detach()


class HASTMethod(QATMethod):
    """``L(x) = kd_weight * T^2 KL_T + fa_weight * FA`` (channel-attention MSE on every
    residual block's output), on the hard sample x and on its promoted version
    ``x' = x + eps * sign(grad_x L(x))``; the student minimises ``L(x) + L(x')``."""

    name = "hast"
    uses_generator = False

    def __init__(self, cfg, teacher, student, feature_layers=None) -> None:
        super().__init__(cfg, teacher, student, feature_layers)
        self.blocks = _resolve_layers(teacher, feature_layers, block_names, "residual blocks")

    def _loss(self, images):
        with FeatureTaps(self.teacher, self.blocks) as tt, FeatureTaps(self.student, self.blocks) as st:
            t_logits = self.teacher(images)
            t_feats = tt.features()
            s_logits = self.student(images)
            s_feats = st.features()
        loss = self.cfg.kd_weight * kd_kl(s_logits, t_logits, self.cfg.temperature)
        if self.cfg.fa_weight > 0:
            loss = loss + self.cfg.fa_weight * feature_alignment(s_feats, t_feats)
        return loss

    def student_backward(self, images, labels, teacher_logits=None):
        if self.cfg.promote_eps == 0:
            loss = self._loss(images)
            loss.backward()
            return loss.detach()
        x = images.detach().requires_grad_(True)
        # one backward gives both the student's gradient on x and grad_x L (through teacher and
        # student, as the promotion maximises the discrepancy between them)
        loss = self._loss(x)
        loss.backward()
        promoted = (x + self.cfg.promote_eps * x.grad.sign()).detach()
        loss_promoted = self._loss(promoted)
        loss_promoted.backward()
        return (loss + loss_promoted).detach()


METHOD_CLASSES = {"gdfq": GDFQMethod, "zaq": ZAQMethod, "hast": HASTMethod}
