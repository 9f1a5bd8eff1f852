"""The shared generator-based QAT loop: :class:`QATTrainer` and :func:`train_qat` (one run's
steps, checkpoints and resumption: docs/qat.md).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import nn

from ..evaluation import progress
from ..quant import calibrate_activations, check_bits
from ..quant.bias_grid import snap_biases
from ..utils import model_fingerprint
from .checkpoint import capture_rng, identity_mismatch, load_checkpoint, restore_rng, save_checkpoint
from .config import QATConfig, make_config
from .generators import GDFQGenerator, ZAQGenerator
from .losses import kd_kl
from .methods import METHOD_CLASSES
from .sources import GeneratorSource, PoolSource
from .student import act_quantizers, build_student, rescale_quant_lrs, student_param_groups
from .teacher import fast_frozen_copy

__all__ = ["QATTrainer", "QATResult", "train_qat", "distillation_gap"]


@dataclass
class QATResult:
    """``student``: the trained quantized model (eval mode); ``history``: one dict per epoch
    (epoch, student_loss, generator_loss, seconds); ``meta``: the run's settings and timings."""

    student: nn.Module
    generator: Optional[nn.Module]
    history: List[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def _lr_factor(cfg: QATConfig) -> Callable[[int], float]:
    """Multiplier of the base lr after ``it`` student iterations."""
    total = cfg.total_iters
    if cfg.schedule == "cosine":
        return lambda it: 0.5 * (1.0 + math.cos(math.pi * min(it, total) / total))
    if cfg.schedule == "multistep":
        bounds = [m * total for m in cfg.milestones]
        return lambda it: cfg.gamma ** sum(it >= b for b in bounds)
    return lambda it: 1.0


class QATTrainer:
    """State and steps of one QAT run (see the module docstring).

    Args:
        teacher: the float model (BN layers allowed). Frozen (eval, ``requires_grad=False``)
            while the trainer lives; :meth:`close` restores its flags.
        method: 'gdfq' | 'zaq' | 'hast'.
        wbits, abits: bits of the inner layers (2..8); first / last layer ``first_last_bits``.
        input_shape: ``(C, H, W)``; num_classes: classifier outputs.
        preset: 'fast' | 'paper'; ``overrides``: any :class:`QATConfig` field.
        pool: HAST only: ``(images [P, C, H, W], labels [P])`` hard samples to train on instead of
            synthesising them.
        feature_layers: module names for ZAQ's stages / HAST's residual blocks (default: found
            automatically for ResNet-style models).
        checkpoint: file written after preparation and after every epoch (atomic).
        layer_bits: per-layer ``(weight, input)`` bits of a mixed-precision plan
            (:func:`zsq_engine.quant.bit_allocation.plan_for_budget`) over ``wbits`` / ``abits``.
    """

    def __init__(self, teacher: nn.Module, method: str, wbits: int, abits: int, *, input_shape: Sequence[int],
                 num_classes: int, preset: str = "fast", seed: int = 0, device: Union[str, torch.device] = "cpu",
                 first_last_bits: Optional[int] = 8, pool=None, feature_layers: Optional[List[str]] = None,
                 checkpoint=None, show_progress: bool = False, layer_bits: Optional[dict] = None,
                 **overrides) -> None:
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        check_bits(wbits, "wbits")
        check_bits(abits, "abits")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if len(tuple(input_shape)) != 3:
            raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.cfg = make_config(method, preset, **overrides)
        if pool is not None and method != "hast":
            raise ValueError(f"pool= is only used by method 'hast', not {method!r}")
        self.method_name, self.preset = method, preset
        self.wbits, self.abits, self.first_last_bits = wbits, abits, first_last_bits
        self.input_shape, self.num_classes = tuple(int(s) for s in input_shape), num_classes
        self.seed = seed
        self.layer_bits = {k: (int(v[0]), None if v[1] is None else int(v[1])) for k, v in (layer_bits or {}).items()}
        self.device = torch.device(device)
        self.show_progress = show_progress
        self.checkpoint_path = Path(checkpoint) if checkpoint is not None else None

        self.teacher = teacher.to(self.device)
        self._teacher_flags = ([(p, p.requires_grad) for p in teacher.parameters()],
                               {m: m.training for m in teacher.modules()})
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

        torch.manual_seed(seed)
        self.student = build_student(self.teacher, wbits, abits, first_last_bits,
                                     layer_bits=self.layer_bits).to(self.device)
        method_cls = METHOD_CLASSES[method]
        method_teacher = self.teacher if method_cls.reads_teacher_bn else fast_frozen_copy(self.teacher)
        self.method = method_cls(self.cfg, method_teacher, self.student, feature_layers)
        self.generator: Optional[nn.Module] = None
        if self.method.uses_generator:
            if method == "gdfq":
                self.generator = GDFQGenerator(self.input_shape, num_classes, self.cfg.latent_dim)
            else:
                self.generator = ZAQGenerator(self.input_shape, self.cfg.latent_dim)
            self.generator = self.generator.to(self.device).train()
        self.pool = None
        if pool is not None:
            images, labels = pool
            self.pool = (images.float().to(self.device), None if labels is None else labels.to(self.device))

        self._factor = _lr_factor(self.cfg)
        groups = student_param_groups(self.student, self.cfg.lr, self.cfg.lr_quant, self.cfg.weight_decay)
        if self.cfg.optimizer == "sgd":
            self.student_opt = torch.optim.SGD(groups, momentum=self.cfg.momentum,
                                               nesterov=self.cfg.nesterov and self.cfg.momentum > 0)
        else:
            self.student_opt = torch.optim.Adam(groups)
        self.student_sched = torch.optim.lr_scheduler.LambdaLR(self.student_opt, [self._factor] * len(groups))
        self.generator_opt = self.generator_sched = None
        if self.generator is not None:
            self.generator_opt = torch.optim.Adam(self.generator.parameters(), lr=self.cfg.gen_lr,
                                                  betas=self.cfg.gen_betas)
            self.generator_sched = torch.optim.lr_scheduler.LambdaLR(self.generator_opt, self._factor)

        self.epoch = 0          # completed QAT epochs
        self.prepared = False   # warm-up and calibration done
        self.history: List[dict] = []
        self.notes: dict = {}   # caller's records kept in the checkpoint (e.g. the start accuracy)
        self.prepare_seconds = 0.0
        self._handoff = None    # (images, labels, teacher logits) of the last generator step, see student_step
        self._closed = False

    # ------------------------------------------------------------------ identity / checkpoints
    def identity(self) -> dict:
        """What a checkpoint must agree on to be resumed by this trainer."""
        return {"method": self.method_name, "preset": self.preset, "wbits": self.wbits, "abits": self.abits,
                "first_last_bits": self.first_last_bits, "seed": self.seed, "config": asdict(self.cfg),
                "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "teacher": model_fingerprint(self.teacher),
                **({"layer_bits": {k: list(v) for k, v in sorted(self.layer_bits.items())}} if self.layer_bits else {})}

    def state_dict(self) -> dict:
        cpu = lambda sd: {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in sd.items()}  # noqa: E731
        return {
            "identity": self.identity(), "epoch": self.epoch, "prepared": self.prepared,
            "history": list(self.history), "prepare_seconds": self.prepare_seconds, "notes": dict(self.notes),
            "student": cpu(self.student.state_dict()),
            "generator": cpu(self.generator.state_dict()) if self.generator is not None else None,
            "student_opt": self.student_opt.state_dict(), "student_sched": self.student_sched.state_dict(),
            "generator_opt": self.generator_opt.state_dict() if self.generator_opt is not None else None,
            "generator_sched": self.generator_sched.state_dict() if self.generator_sched is not None else None,
            "pool": None if self.pool is None else {"images": self.pool[0].cpu(),
                                                    "labels": None if self.pool[1] is None else self.pool[1].cpu()},
            "rng": capture_rng(self.device),
        }

    def save(self) -> None:
        if self.checkpoint_path is not None:
            save_checkpoint(self.checkpoint_path, self.state_dict())

    def load(self, path) -> None:
        """Continue from a checkpoint of a run with the same identity (else ValueError)."""
        ckpt = load_checkpoint(path)
        why = identity_mismatch(ckpt["identity"], self.identity())
        if why:
            raise ValueError(f"checkpoint {path} belongs to a run with other settings ({why})")
        self.student.load_state_dict(ckpt["student"])
        if not ckpt["prepared"]:
            for q in act_quantizers(self.student):
                q.calibrated = False  # the stored ranges are the placeholders of an uncalibrated student
        if self.generator is not None:
            self.generator.load_state_dict(ckpt["generator"])
            self.generator_opt.load_state_dict(ckpt["generator_opt"])
            self.generator_sched.load_state_dict(ckpt["generator_sched"])
        self.student_opt.load_state_dict(ckpt["student_opt"])
        self.student_sched.load_state_dict(ckpt["student_sched"])
        if ckpt["pool"] is not None:
            labels = ckpt["pool"]["labels"]
            self.pool = (ckpt["pool"]["images"].to(self.device), None if labels is None else labels.to(self.device))
        self.epoch, self.prepared = int(ckpt["epoch"]), bool(ckpt["prepared"])
        self.history = list(ckpt["history"])
        self.notes = dict(ckpt.get("notes") or {})
        self.prepare_seconds = float(ckpt.get("prepare_seconds", 0.0))
        restore_rng(ckpt["rng"], self.device)

    def close(self) -> None:
        """Give the teacher its ``requires_grad`` flags and train/eval modes back."""
        if self._closed:
            return
        params, modes = self._teacher_flags
        for p, flag in params:
            p.requires_grad_(flag)
        for m, flag in modes.items():
            m.training = flag
        self._closed = True

    # ------------------------------------------------------------------ data
    def source(self):
        if self.generator is not None:
            return GeneratorSource(self.generator, self.num_classes, self.method.conditional)
        if self.pool is None:
            raise RuntimeError("the HAST pool does not exist yet: call prepare() first")
        return PoolSource(self.pool[0], self.pool[1], self.cfg.augment)

    def _synthesise_pool(self) -> None:
        from ..synth import synthesize

        result = synthesize(self.teacher, "hast", num=self.cfg.pool_size, batch_size=self.cfg.pool_batch,
                            iters=self.cfg.pool_iters, seed=self.seed, device=self.device, preset="paper",
                            show_progress=self.show_progress, input_shape=self.input_shape,
                            num_classes=self.num_classes)
        self.pool = (result.images.to(self.device), result.labels.to(self.device))
        # synthesize() gives the teacher its flags back: freeze it again
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ steps
    def generator_forward(self) -> torch.Tensor:
        """Draw a generator batch and return its generator loss (in the graph). For a method
        with ``student_reuses_generator_batch`` the batch (detached) and the teacher's logits on
        it are kept for the next :meth:`student_step`."""
        if self.generator is None:
            raise RuntimeError(f"method {self.method_name!r} has no generator")
        images, labels = self.source().draw(self.cfg.batch_size, grad=True)
        loss, teacher_logits = self.method.generator_loss(images, labels)
        if self.method.student_reuses_generator_batch:
            self._handoff = (images.detach(), labels, teacher_logits)
        return loss

    def generator_step(self) -> torch.Tensor:
        """One generator update; returns the detached generator loss (no host sync)."""
        loss = self.generator_forward()
        params = [p for p in self.generator.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        self.generator_opt.step()
        self.generator_opt.zero_grad(set_to_none=True)
        return loss.detach()

    def student_step(self) -> torch.Tensor:
        """One student update; returns the detached loss. The batch is the one the generator
        step before it handed over (GDFQ, as its code) or a freshly drawn one."""
        if self._handoff is not None:
            (images, labels, teacher_logits), self._handoff = self._handoff, None
        else:
            images, labels = self.source().draw(self.cfg.batch_size, grad=False)
            teacher_logits = None
        self.student.train()
        self.student_opt.zero_grad(set_to_none=True)
        loss = self.method.student_backward(images.detach(), labels, teacher_logits)
        self.student_opt.step()
        self.student_opt.zero_grad(set_to_none=True)
        return loss

    # ------------------------------------------------------------------ phases
    def prepare(self, on_prepared: Optional[Callable[["QATTrainer"], None]] = None) -> None:
        """Pool synthesis (HAST), generator warm-up (GDFQ) and activation calibration; then
        ``on_prepared(self)`` (e.g. to measure the naive-quantized start) and a checkpoint."""
        if self.prepared:
            return
        t0 = time.perf_counter()
        if self.method_name == "hast" and self.pool is None:
            self._synthesise_pool()
        # GDFQ's warm-up needs only the teacher and should shape the calibration data; ZAQ's
        # generator plays against the student, which must be calibrated before it can run.
        if self.method.generator_needs_student:
            self._calibrate()
            self._warm_up_generator()
        else:
            self._warm_up_generator()
            self._calibrate()
        self.prepared = True
        self.prepare_seconds += time.perf_counter() - t0
        if on_prepared is not None:
            on_prepared(self)
        self.save()

    def _warm_up_generator(self) -> None:
        if self.generator is None or self.cfg.gen_warmup_iters == 0:
            return
        bar = progress(range(self.cfg.gen_warmup_iters), total=self.cfg.gen_warmup_iters,
                       desc=f"{self.method_name} generator warm-up", enabled=self.show_progress)
        total = torch.zeros((), device=self.device)
        for it in bar:
            total += self.generator_step()
            if (it + 1) % self.cfg.log_every == 0 and hasattr(bar, "set_postfix"):
                bar.set_postfix(gen_loss=f"{float(total) / (it + 1):.4g}", refresh=False)
        self._handoff = None  # warm-up steps train no student
        if hasattr(bar, "close"):
            bar.close()

    def _calibration_source(self):
        if self.cfg.calib_source == "data" or self.generator is not None:
            return self.source()
        # HAST's code calibrates on a GDFQ generator, not on its hard samples
        from ..synth.gdfq import train_generator

        settings = {"latent_dim": self.cfg.latent_dim, "lr": self.cfg.gen_lr, "betas": list(self.cfg.gen_betas),
                    "bns_weight": self.cfg.bns_weight}
        gen, _ = train_generator(self.teacher, self.cfg.gen_warmup_iters, self.input_shape, self.num_classes,
                                 batch_size=self.cfg.batch_size, device=self.device, settings=settings,
                                 show_progress=self.show_progress, desc=f"{self.method_name} calibration generator")
        return GeneratorSource(gen, self.num_classes, conditional=True)

    def _calibrate(self) -> None:
        src = self._calibration_source()
        with torch.no_grad():
            batches = [src.draw(self.cfg.batch_size)[0] for _ in range(self.cfg.calib_batches)]
        calibrate_activations(self.student, batches, progress=False, method=self.cfg.act_calibration)
        # scale lrs are relative to the calibrated ranges (student.student_param_groups)
        rescale_quant_lrs(self.student_opt, self.cfg.lr_quant, self.student_sched)

    def train_epoch(self) -> dict:
        """One epoch of ``iters_per_epoch`` student steps (+ generator steps); returns its log row."""
        if not self.prepared:
            raise RuntimeError("call prepare() before train_epoch()")
        cfg = self.cfg
        t0 = time.perf_counter()
        sums = torch.zeros(2, device=self.device)  # student, generator loss sums: read rarely
        gen_steps = 0
        bar = progress(range(cfg.iters_per_epoch), total=cfg.iters_per_epoch,
                       desc=f"{self.method_name} epoch {self.epoch + 1}/{cfg.epochs}", enabled=self.show_progress)
        for it in bar:
            if self.generator is not None and cfg.train_generator and it % cfg.student_steps_per_gen == 0:
                sums[1] += self.generator_step()
                gen_steps += 1
            sums[0] += self.student_step()
            self.student_sched.step()
            if self.generator_sched is not None:
                self.generator_sched.step()
            if (it + 1) % cfg.log_every == 0 and hasattr(bar, "set_postfix"):
                s = sums.tolist()
                bar.set_postfix(loss=f"{s[0] / (it + 1):.4g}",
                                **({"gen": f"{s[1] / gen_steps:.4g}"} if gen_steps else {}), refresh=False)
        if hasattr(bar, "close"):
            bar.close()
        s = sums.tolist()
        self.epoch += 1
        row = {"epoch": self.epoch, "student_loss": s[0] / cfg.iters_per_epoch,
               "generator_loss": s[1] / gen_steps if gen_steps else None,
               "seconds": round(time.perf_counter() - t0, 3)}
        self.history.append(row)
        self.save()
        return row

    def fit(self, on_epoch_end: Optional[Callable[[dict], None]] = None,
            on_prepared: Optional[Callable[["QATTrainer"], None]] = None) -> None:
        """prepare() then the remaining epochs; ``on_epoch_end(row)`` after each checkpoint."""
        self.prepare(on_prepared)
        while self.epoch < self.cfg.epochs:
            row = self.train_epoch()
            if on_epoch_end is not None:
                on_epoch_end(row)


@torch.no_grad()
def distillation_gap(student: nn.Module, teacher: nn.Module, images: torch.Tensor, temperature: float = 1.0) -> float:
    """``KL(teacher || student)`` at ``temperature`` on ``images`` (both in eval mode): how far
    the student's predictions are from the teacher's. Used to compare before / after QAT."""
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    try:
        return float(kd_kl(student(images), teacher(images), temperature)) / temperature ** 2
    finally:
        student.train(modes[0])
        teacher.train(modes[1])


def train_qat(teacher: nn.Module, method: str, wbits: int, abits: int, *, input_shape: Sequence[int],
              num_classes: int, preset: str = "fast", seed: int = 0, device: Union[str, torch.device] = "cpu",
              checkpoint=None, resume: bool = False, pool=None, first_last_bits: Optional[int] = 8,
              feature_layers: Optional[List[str]] = None, show_progress: bool = False,
              on_epoch_end: Optional[Callable[[dict], None]] = None,
              on_prepared: Optional[Callable[[QATTrainer], None]] = None, layer_bits: Optional[dict] = None,
              **overrides) -> QATResult:
    """Generator-based zero-shot QAT of ``teacher`` with GDFQ, ZAQ or HAST (see :class:`QATTrainer`).

    ``checkpoint``: file written after preparation and every epoch. ``resume=True`` continues
    from it when it exists (the settings must match); without ``resume`` an existing checkpoint
    is an error, so a finished or interrupted run is never silently overwritten.
    Returns a :class:`QATResult` (student in eval mode). The teacher is left as it came.
    """
    if checkpoint is not None and Path(checkpoint).exists() and not resume:
        raise ValueError(f"checkpoint {checkpoint} already exists: pass resume=True (--resume) to continue it, "
                         "or remove it to start over")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint= (the file to continue from)")
    trainer = QATTrainer(teacher, method, wbits, abits, input_shape=input_shape, num_classes=num_classes,
                         preset=preset, seed=seed, device=device, first_last_bits=first_last_bits, pool=pool,
                         feature_layers=feature_layers, checkpoint=checkpoint, show_progress=show_progress,
                         layer_bits=layer_bits, **overrides)
    resumed_from = None
    try:
        if resume and Path(checkpoint).exists():
            trainer.load(checkpoint)
            resumed_from = trainer.epoch
        t0 = time.perf_counter()
        trainer.fit(on_epoch_end, on_prepared)
        # the trained grids are final: keep the biases where integer engines can add them
        snapped = snap_biases(trainer.student)
        seconds = time.perf_counter() - t0
    finally:
        trainer.close()
    meta = {"method": method, "preset": preset, "wbits": wbits, "abits": abits, "first_last_bits": first_last_bits,
            "seed": seed, "config": asdict(trainer.cfg), "epochs": trainer.epoch,
            "resumed_from_epoch": resumed_from, "prepare_seconds": round(trainer.prepare_seconds, 2),
            "seconds_this_call": round(seconds, 2),
            "train_seconds": round(sum(r["seconds"] for r in trainer.history), 2), "notes": dict(trainer.notes),
            "biases_on_accumulator_grid": len(snapped)}
    if trainer.layer_bits:
        meta["layer_bits"] = {k: list(v) for k, v in trainer.layer_bits.items()}
    return QATResult(trainer.student.eval(), trainer.generator, list(trainer.history), meta)
