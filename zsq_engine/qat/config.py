"""Settings of a QAT run: :class:`QATConfig`, the per-method ``paper`` / ``fast`` presets and
:func:`make_config`.

``paper`` follows the released code of each method (docs/qat.md lists where a value is ours);
``fast`` trains the Fashion-MNIST ResNet at W4A4 in a few minutes on 2 CPU cores.

One *iteration* is one student step. Generator steps (GDFQ, ZAQ) happen before every
``student_steps_per_gen``-th student step; ZAQ's "5 student steps per generator step" is
``student_steps_per_gen=5``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, Optional, Tuple

__all__ = ["METHODS", "PRESET_NAMES", "QATConfig", "make_config", "preset_table"]

METHODS = ("gdfq", "zaq", "hast")
PRESET_NAMES = ("fast", "paper")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("multistep", "cosine", "constant")
ACT_CALIBRATIONS = ("minmax", "mse", "percentile")
CALIB_SOURCES = ("data", "gdfq")


@dataclass
class QATConfig:
    """Every knob of one QAT run (see :func:`make_config` for the method defaults)."""

    method: str = "gdfq"
    epochs: int = 4
    iters_per_epoch: int = 100
    batch_size: int = 64
    # student optimiser: weights / biases at ``lr`` (with weight decay); quantizer scales at
    # ``lr_quant`` times their calibrated median magnitude (relative), zero points at ``lr_quant``
    # grid steps; no weight decay on either (it would shrink the ranges)
    lr: float = 1e-4
    lr_quant: float = 1e-4
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    schedule: str = "multistep"
    milestones: Tuple[float, ...] = ()   # fractions of ``epochs`` where the lr is multiplied by gamma
    gamma: float = 0.1
    # generator (GDFQ / ZAQ)
    latent_dim: int = 100
    gen_lr: float = 1e-3
    gen_betas: Tuple[float, float] = (0.5, 0.999)
    gen_warmup_iters: int = 0            # generator-only steps before calibration (GDFQ's warm-up epochs;
                                         # HAST with calib_source 'gdfq': its calibration generator's steps)
    train_generator: bool = True         # keep training the generator during QAT
    student_steps_per_gen: int = 1
    # activation-range calibration on synthetic batches before QAT
    calib_batches: int = 4
    act_calibration: str = "minmax"
    # where HAST's calibration batches come from: 'data' = its training batches (the pool);
    # 'gdfq' = a GDFQ generator trained for gen_warmup_iters steps first, as the HAST code does
    calib_source: str = "data"
    # losses
    temperature: float = 20.0
    kd_weight: float = 1.0
    ce_weight: float = 1.0               # GDFQ: CE of the student on the generator's labels
    bns_weight: float = 0.1              # GDFQ generator: CE + bns_weight * BN statistics
    relation_weight: float = 1.0         # ZAQ alpha
    act_weight: float = 0.1              # ZAQ beta (generator's activation regulariser)
    fa_weight: float = 1000.0            # HAST lambda
    promote_eps: float = 0.01            # HAST hard-sample promotion step
    # HAST hard-sample pool (synthesised by zsq_engine.synth 'hast' unless given)
    pool_size: int = 1024
    pool_batch: int = 256
    pool_iters: int = 1000
    augment: bool = True                 # random-resized-crop + flip of pool samples
    log_every: int = 20

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("epochs", "iters_per_epoch", "batch_size", "student_steps_per_gen", "calib_batches",
                     "pool_size", "pool_batch", "pool_iters", "log_every", "latent_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (generator BN needs batch statistics), got {self.batch_size}")
        if isinstance(self.gen_warmup_iters, bool) or not isinstance(self.gen_warmup_iters, int) \
                or self.gen_warmup_iters < 0:
            raise ValueError(f"gen_warmup_iters must be an int >= 0, got {self.gen_warmup_iters!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.calib_source not in CALIB_SOURCES:
            raise ValueError(f"calib_source must be one of {CALIB_SOURCES}, got {self.calib_source!r}")
        if self.act_calibration not in ACT_CALIBRATIONS:
            raise ValueError(f"act_calibration must be one of {ACT_CALIBRATIONS}, got {self.act_calibration!r}")
        for name in ("lr", "lr_quant", "gen_lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "kd_weight", "ce_weight", "bns_weight", "relation_weight", "act_weight",
                     "fa_weight", "promote_eps", "momentum"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        self.milestones = tuple(float(m) for m in self.milestones)
        if any(not 0.0 < m < 1.0 for m in self.milestones):
            raise ValueError(f"milestones are fractions of the epochs in (0, 1), got {self.milestones}")
        self.gen_betas = tuple(float(b) for b in self.gen_betas)

    @property
    def total_iters(self) -> int:
        return self.epochs * self.iters_per_epoch


# Method defaults from the released code (docs METHODS.md); the 'fast' rows are ours.
_PAPER: Dict[str, dict] = {
    "gdfq": dict(epochs=400, iters_per_epoch=200, batch_size=32, optimizer="sgd", lr=1e-4, lr_quant=1e-4,
                 schedule="multistep", milestones=(0.25, 0.5, 0.75), latent_dim=100, gen_lr=1e-3,
                 gen_betas=(0.5, 0.999), gen_warmup_iters=4 * 200, train_generator=True, student_steps_per_gen=1,
                 temperature=20.0, kd_weight=1.0, ce_weight=1.0, bns_weight=0.1),
    "zaq": dict(epochs=300, iters_per_epoch=250, batch_size=256, optimizer="sgd", lr=0.1, lr_quant=0.1,
                nesterov=False, weight_decay=5e-4, schedule="multistep", milestones=(1 / 3, 2 / 3),
                latent_dim=256, gen_lr=1e-3, gen_betas=(0.9, 0.999), gen_warmup_iters=0, train_generator=True,
                student_steps_per_gen=5, relation_weight=1.0, act_weight=0.1),
    "hast": dict(epochs=400, iters_per_epoch=200, batch_size=256, optimizer="sgd", lr=1e-5, lr_quant=1e-5,
                 schedule="multistep", milestones=(0.25, 0.5, 0.75), temperature=20.0, kd_weight=20.0,
                 fa_weight=1000.0, promote_eps=0.01, pool_size=1024, pool_batch=256, pool_iters=1000,
                 augment=True, act_calibration="mse", calib_source="gdfq", gen_warmup_iters=4 * 200),
}
_FAST: Dict[str, dict] = {
    # Adam with small weight steps: the student starts from the teacher's weights and the data is
    # synthetic, so large steps fit the synthetic distribution at the expense of real accuracy.
    # MSE activation calibration: min/max ranges on hard or generated samples are set by
    # outliers. HAST calibrates on a GDFQ generator as its authors' code does. The runs behind
    # each choice: docs/qat.md, "Why the fast presets".
    "gdfq": dict(epochs=4, iters_per_epoch=100, batch_size=32, optimizer="adam", lr=1e-5, lr_quant=1e-3,
                 schedule="cosine", latent_dim=100, gen_lr=1e-3, gen_betas=(0.5, 0.999), gen_warmup_iters=200,
                 train_generator=True, student_steps_per_gen=1, temperature=20.0, kd_weight=1.0, ce_weight=1.0,
                 bns_weight=0.1, calib_batches=4, act_calibration="mse"),
    # ZAQ's samples are adversarial to the student: ranges that follow them lose real-data
    # agreement, so its ranges move 10x slower than the other methods'. Generator lr 1e-5, not the
    # paper's 1e-3: a faster generator runs away from the student and undoes its gain
    # (docs/qat.md, "Why the fast presets").
    "zaq": dict(epochs=4, iters_per_epoch=100, batch_size=64, optimizer="adam", lr=1e-5, lr_quant=1e-4,
                schedule="cosine", latent_dim=256, gen_lr=1e-5, gen_betas=(0.9, 0.999), gen_warmup_iters=0,
                train_generator=True, student_steps_per_gen=5, relation_weight=1.0, act_weight=0.1,
                calib_batches=4, act_calibration="mse"),
    "hast": dict(epochs=4, iters_per_epoch=100, batch_size=64, optimizer="adam", lr=1e-5, lr_quant=1e-3,
                 schedule="cosine", temperature=20.0, kd_weight=1.0, fa_weight=1000.0, promote_eps=0.01,
                 pool_size=256, pool_batch=64, pool_iters=100, augment=True, calib_batches=4,
                 act_calibration="mse", calib_source="gdfq", gen_warmup_iters=200),
}
_PRESETS = {"paper": _PAPER, "fast": _FAST}


def make_config(method: str, preset: str = "fast", **overrides) -> QATConfig:
    """The ``preset`` settings of ``method`` with ``overrides`` (any :class:`QATConfig` field;
    ``None`` values are ignored so CLI options can be passed through unchanged)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if preset not in _PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESET_NAMES)}, got {preset!r}")
    known = {f.name for f in fields(QATConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown QAT setting(s) {unknown}; valid: {sorted(known - {'method'})}")
    values = dict(_PRESETS[preset][method])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return QATConfig(method=method, **values)


def preset_table(preset: Optional[str] = None) -> str:
    """Plain-text summary of the presets (for ``zsq qat --help``)."""
    lines = []
    for name in ([preset] if preset else PRESET_NAMES):
        for method in METHODS:
            c = make_config(method, name)
            lines.append(f"  {name:5s} {method:4s}  {c.epochs} epochs x {c.iters_per_epoch} iters, batch "
                         f"{c.batch_size}, {c.optimizer} lr {c.lr:g} (ranges {c.lr_quant:g}), {c.schedule}")
    return "\n".join(lines)
