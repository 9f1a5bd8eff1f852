"""Block reconstruction PTQ: BRECQ, QDrop and Genie-M on top of :mod:`zsq_engine.quant`
(:func:`reconstruct_model`; its pipeline and presets: docs/recon.md).
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from .. import ops
from ..evaluation import progress
from ..models.roles import has_mobilenet_blocks
from ..quant import calibrate_activations, check_bits, fold_model_bn, quantize_model
from ..quant.modules import QuantLayer
from ..quant.bit_allocation import apply_bit_plan
from ..quant.bias_grid import snap_biases
from .blocks import Unit, partition
from .run_progress import RunProgress, unit_work
from .quantizers import AdaRoundWeightQuantizer, LSQActQuantizer, bake_act, bake_weight

__all__ = ["ACT_INITS", "METHODS", "PRESETS", "ReconConfig", "ReconResult", "UnsupportedUnitError", "make_config", "reconstruct_model",
           "reconstruct_unit", "capture_unit_io", "unit_mse"]

METHODS = ("genie", "brecq", "qdrop")
ACT_INITS = ("data", "bn")

# iters per unit, calibration samples, batch size, rounding-logit lr. 'fast' is sized for the
# Fashion-MNIST ResNet on a small CPU (timings in docs/accuracy.md). With lr 1e-3 a logit moves
# at most ~0.25 in 250 Adam steps, so few roundings could flip; 'fast' therefore uses a 10x
# logit lr (paper keeps 1e-3).
PRESETS: Dict[str, Dict[str, float]] = {
    "paper": {"iters": 20000, "num": 1024, "batch_size": 32, "lr_alpha": 1e-3},
    "fast": {"iters": 250, "num": 256, "batch_size": 32, "lr_alpha": 1e-2},
}


@dataclass
class ReconConfig:
    """Everything one reconstruction run needs to know (see :func:`make_config`)."""

    method: str = "genie"
    iters: int = 400
    batch_size: int = 32
    warmup: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0
    round_weight: float = 0.01
    lr_alpha: float = 1e-3
    lr_weight_scale: float = 1e-4
    lr_act_scale: float = 4e-5
    learn_weight_scale: bool = True
    search_weight_scale: bool = True
    input_mix_prob: float = 0.5     # probability of taking the QUANTIZED unit input per element
    act_drop_prob: float = 0.5      # QDrop: probability of quantizing an activation element
    log_every: int = 50
    rounding_init: str = "nearest"  # or 'squant': AdaRound starts from the SQuant rounding

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid methods: {', '.join(METHODS)}")
        for name in ("iters", "batch_size", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup!r}")
        for name in ("input_mix_prob", "act_drop_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")


def make_config(method: str = "genie", preset: str = "fast", *, iters: Optional[int] = None,
                batch_size: Optional[int] = None, mobilenet: bool = False, **overrides) -> ReconConfig:
    """The method's defaults (docs METHODS.md) with the preset's iterations / batch size.

    ``mobilenet``: BRECQ uses rounding weight 0.1 instead of 0.01 on MobileNetV2.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    base = dict(method=method, iters=p["iters"] if iters is None else iters,
                batch_size=p["batch_size"] if batch_size is None else batch_size, lr_alpha=p["lr_alpha"])
    if method == "genie":
        base.update(learn_weight_scale=True, search_weight_scale=True, input_mix_prob=0.5, act_drop_prob=0.5,
                    lr_act_scale=4e-5)
    elif method == "qdrop":
        base.update(learn_weight_scale=False, search_weight_scale=False, input_mix_prob=0.5, act_drop_prob=0.5,
                    lr_act_scale=4e-5)
    else:  # brecq: quantized unit input, no dropping, activation scales at BRECQ's 4e-4
        base.update(learn_weight_scale=False, search_weight_scale=False, input_mix_prob=1.0, act_drop_prob=0.0,
                    lr_act_scale=4e-4, round_weight=0.1 if mobilenet else 0.01)
    base.update(overrides)
    return ReconConfig(**base)


@dataclass
class ReconResult:
    """``model``: the reconstructed quantized model (eval mode); ``units``: one dict per unit
    (name, type, iters, seconds, mse_before, mse_after); ``meta``: the run's settings."""

    model: nn.Module
    units: List[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


class _Stop(Exception):
    pass


class UnsupportedUnitError(RuntimeError):
    """A unit whose input / output cannot be captured once per forward (named in the message)."""


@torch.no_grad()
def capture_unit_io(model: nn.Module, unit_name: str, data: torch.Tensor, *, chunk: int = 256,
                    want_output: bool = True, store_device: Optional[torch.device] = None):
    """Run ``data`` through ``model`` and return the input (and output) of submodule ``unit_name``.

    The forward stops right after the unit (nothing downstream runs). Returns ``(inputs,
    outputs or None)``, each ``[N, ...]`` on ``store_device`` (default: the model's device).
    """
    unit = model.get_submodule(unit_name)
    device = next(model.parameters()).device
    store_device = device if store_device is None else store_device
    ins, outs = [], []

    def hook(_m, args, out):
        ins.append(args[0].detach().to(store_device))
        if want_output:
            outs.append(out.detach().to(store_device))
        raise _Stop

    handle = unit.register_forward_hook(hook)
    try:
        for i in range(0, data.shape[0], chunk):
            n_before = len(ins)
            try:
                model(data[i:i + chunk].to(device))
            except _Stop:
                pass
            if len(ins) != n_before + 1:
                raise UnsupportedUnitError(f"unit {unit_name!r} ({type(unit).__name__}) is not called by the "
                                           "model's forward; block reconstruction needs one call per forward")
    finally:
        handle.remove()
    return torch.cat(ins), (torch.cat(outs) if want_output else None)


def _seed(*parts) -> int:
    digest = hashlib.sha256(":".join(map(str, ("zsq-recon",) + parts)).encode()).digest()
    return int.from_bytes(digest[:5], "little")  # 40 bits: + up to 2^23 steps stays distinct


def mix_unit_input(x_q: torch.Tensor, x_fp: torch.Tensor, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    """QDrop's unit-input mixing, one fused pass (a module-level name, so that benchmarks can
    swap in the research code's ``torch.where(torch.rand_like(x) < p, ...)`` for comparison).
    ``offset``: element offset of ``x_q[0]`` in the full batch (data-parallel shares)."""
    return ops.qdrop_mix(x_q, x_fp, p, seed=seed, offset=offset)


def _rec_loss(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # ||y_q - y||^2 summed over dim 1 (channels / classes), averaged over the rest
    return (y - target).pow(2).sum(1).mean()


@torch.no_grad()
def unit_mse(unit: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 256) -> float:
    """The reconstruction loss of ``unit`` on (x, y), without dropping, averaged over samples."""
    device = next(unit.parameters()).device
    total, n = 0.0, 0
    for i in range(0, x.shape[0], chunk):
        xb, yb = x[i:i + chunk].to(device), y[i:i + chunk].to(device)
        total += float(_rec_loss(unit(xb), yb)) * xb.shape[0]
        n += xb.shape[0]
    return total / max(n, 1)


def _beta(it: int, cfg: ReconConfig) -> Optional[float]:
    """None during the warm-up (no rounding loss), then linear cfg.beta_start -> cfg.beta_end."""
    start = int(cfg.warmup * cfg.iters)
    if it < start:
        return None
    rel = (it - start) / max(1, cfg.iters - start)
    return cfg.beta_end + (cfg.beta_start - cfg.beta_end) * max(0.0, 1.0 - rel)


def reconstruct_unit(unit: nn.Module, x_fp: torch.Tensor, y_fp: torch.Tensor, x_q: torch.Tensor,
                     cfg: ReconConfig, *, seed: int = 0, desc: str = "unit", show_progress: bool = True,
                     eval_samples: int = 256, world=None) -> dict:
    """Reconstruct one unit in place (its QuantLayers end up hard-rounded and baked).

    Args:
        unit: a module holding calibrated ``QuantLayer``s (or a QuantLayer itself), on its device.
        x_fp, y_fp: FP inputs / outputs ``[N, ...]`` of the unit; x_q: the quantized model's
            unit inputs ``[N, ...]``. Any device (batches are moved to the unit's device).
        cfg: see :func:`make_config`.
        world: a :class:`.distributed.ReconWorld` of several processes to share each batch
            (None: this process alone).
    Returns a dict with iters, seconds, mse_before and mse_after (the loss on the first
    ``eval_samples`` cached samples with x_q as input, no dropping, hard weights after) and
    ``kept``: 'reconstructed', or 'start' when the run ended worse than it began and the unit
    was put back to its calibrated start.
    """
    if not (x_fp.shape == x_q.shape and x_fp.shape[0] == y_fp.shape[0]):
        raise ValueError(f"cached tensors disagree: x_fp {tuple(x_fp.shape)}, x_q {tuple(x_q.shape)}, "
                         f"y_fp {tuple(y_fp.shape)}")
    n = x_fp.shape[0]
    if n < 1:
        raise ValueError("no cached samples for the unit")
    layers = [m for m in unit.modules() if isinstance(m, QuantLayer)]
    if not layers:
        raise ValueError(f"{desc}: no quantized layer to reconstruct")
    device = next(unit.parameters()).device
    was_training = unit.training
    unit.eval()
    requires = {p: p.requires_grad for p in unit.parameters()}
    for p in unit.parameters():
        p.requires_grad_(False)
    n_eval = min(n, eval_samples)
    mse_before = unit_mse(unit, x_q[:n_eval], y_fp[:n_eval])
    start_state = {k: v.detach().clone() for k, v in unit.state_dict().items()}

    # swap in the reconstruction quantizers
    swaps = []
    wquants, aquants = [], []
    for j, layer in enumerate(layers):
        wt, at = layer.weight_quantizer, layer.act_quantizer
        wq = aq = None
        if wt is not None and wt.enabled:
            wq = AdaRoundWeightQuantizer(layer.weight, wt, learn_scale=cfg.learn_weight_scale,
                                         search_scale=cfg.search_weight_scale,
                                         rounding_init=cfg.rounding_init).to(device)
            layer.weight_quantizer = wq
            wquants.append(wq)
        if at is not None and at.enabled:
            aq = LSQActQuantizer(at, drop_prob=cfg.act_drop_prob, seed=_seed(seed, desc, j)).to(device)
            aq.dropping = cfg.act_drop_prob > 0.0
            layer.act_quantizer = aq
            aquants.append(aq)
        swaps.append((layer, wt, wq, at, aq))

    t0 = time.perf_counter()
    try:
        groups, lambdas = [], []
        cosine = lambda it: 0.5 * (1.0 + math.cos(math.pi * it / cfg.iters))  # noqa: E731
        alphas = [q.alpha for q in wquants]
        wscales = [q.scale for q in wquants if cfg.learn_weight_scale]
        ascales = [q.scale for q in aquants]
        for params, lr, sched in ((alphas, cfg.lr_alpha, lambda it: 1.0), (wscales, cfg.lr_weight_scale, cosine),
                                  (ascales, cfg.lr_act_scale, cosine)):
            if params:
                groups.append({"params": params, "lr": lr})
                lambdas.append(sched)
        if groups:
            opt = torch.optim.Adam(groups)
            scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
            gen = torch.Generator(device=x_q.device).manual_seed(_seed(seed, desc, "batches"))
            mix_seed = _seed(seed, desc, "mix")
            bar = progress(range(cfg.iters), total=cfg.iters, desc=desc, enabled=show_progress)
            shared = world is not None and world.size > 1
            params = [p for g in groups for p in g["params"]]
            for it in bar:
                idx = torch.randint(n, (min(cfg.batch_size, n),), generator=gen, device=x_q.device)
                full, row0 = idx.shape[0], 0
                if shared:
                    row0, row1 = world.rows(full)
                    idx = idx[row0:row1]
                    for q in aquants:
                        q.row_offset = row0
                xq = x_q.index_select(0, idx).to(device, non_blocking=True)
                yf = y_fp.index_select(0, idx).to(device, non_blocking=True)
                if cfg.input_mix_prob < 1.0:
                    xf = x_fp.index_select(0, idx).to(device, non_blocking=True)
                    # elementwise choice in one fused pass, a fresh counter stream per step
                    if shared:
                        xin = mix_unit_input(xq, xf, cfg.input_mix_prob, mix_seed + it,
                                             offset=row0 * (x_fp[0].numel()))
                    else:
                        xin = mix_unit_input(xq, xf, cfg.input_mix_prob, mix_seed + it)
                else:
                    xin = xq
                if shared:  # this share's part of the full batch's mean: gradients sum over processes
                    y = unit(xin)
                    rec = (y - yf).pow(2).sum(1).sum() / (full * (y[0].numel() // y.shape[1]))
                else:
                    rec = _rec_loss(unit(xin), yf)
                beta = _beta(it, cfg)
                loss = rec
                if beta is not None and wquants and (not shared or world.rank == 0):
                    reg = sum(q.regularizer(beta) for q in wquants)
                    loss = rec + cfg.round_weight * reg
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if shared:
                    world.sum_gradients(params)
                opt.step()
                scheduler.step()
                for q in aquants:
                    q.step()
                if it % cfg.log_every == 0 and hasattr(bar, "set_postfix"):
                    bar.set_postfix(rec=f"{float(rec.detach()):.4g}", loss=f"{float(loss.detach()):.4g}",
                                    refresh=False)
            if hasattr(bar, "close"):
                bar.close()
    finally:
        # hard rounding, bake into the plain quantizers, restore them
        for layer, wt, wq, at, aq in swaps:
            if wq is not None:
                bake_weight(layer.weight, wq, wt)
                layer.weight_quantizer = wt
            if aq is not None:
                bake_act(aq, at)
                layer.act_quantizer = at
        for p, r in requires.items():
            p.requires_grad_(r)
        unit.train(was_training)
    seconds = time.perf_counter() - t0
    mse_after = unit_mse(unit, x_q[:n_eval], y_fp[:n_eval])
    kept = "reconstructed"
    if mse_after > mse_before:
        # a short run can end worse than it started (the rounding annealed before it converged,
        # activation steps pulled off the synthetic data's ranges): keep the calibrated start
        unit.load_state_dict(start_state)
        kept, mse_after = "start", unit_mse(unit, x_q[:n_eval], y_fp[:n_eval])
    return {"iters": cfg.iters, "seconds": round(seconds, 3), "mse_before": mse_before, "mse_after": mse_after,
            "kept": kept}


def _as_images(data) -> torch.Tensor:
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor) and data[0].dim() >= 2 \
            and not isinstance(data, list):
        data = data[0]
    if isinstance(data, list):
        data = torch.cat([b[0] if isinstance(b, (tuple, list)) else b for b in data]) if data else torch.empty(0)
    if not isinstance(data, torch.Tensor) or not data.is_floating_point():
        raise TypeError("data must be a float tensor [N, C, H, W] (or a list of batches / (x, y) tuples)")
    if data.shape[0] == 0:
        raise ValueError("calibration data is empty (0 images)")
    return data


def reconstruct_model(model: nn.Module, data, wbits: int, abits: int, *, method: str = "genie",
                      preset: str = "fast", iters: Optional[int] = None, num: Optional[int] = None,
                      batch_size: Optional[int] = None, seed: int = 0,
                      device: Union[str, torch.device] = "cpu", units: Optional[Sequence[str]] = None,
                      first_last_bits: Optional[int] = 8, offload: Optional[bool] = None,
                      show_progress: bool = True, checkpoint=None,
                      on_unit_done: Optional[Callable[[int, int], None]] = None,
                      layer_bits: Optional[dict] = None, act_init: str = "data", bias_correction: bool = False,
                      **overrides) -> ReconResult:
    """Quantize a float model with block reconstruction (BRECQ / QDrop / Genie-M).

    Args:
        model: float model (BN layers allowed; not modified).
        data: calibration images ``[N, C, H, W]`` in the model's input space (synthetic or real),
            or a list of batches; the first ``num`` are used (default: the preset's).
        wbits, abits: bits of the inner layers, 2..8; first / last layer get ``first_last_bits``.
        method: 'genie' | 'brecq' | 'qdrop'. preset: 'fast' | 'paper' (see :data:`PRESETS`).
        iters, batch_size: override the preset (iterations per unit, batch size).
        units: optional module names to reconstruct as units (default: detected blocks).
        offload: keep the cached unit inputs / outputs on CPU (default: only for CUDA devices
            when the cache would exceed 2 GiB).
        checkpoint: file for per-unit progress (:mod:`.resume`): written atomically after every
            unit; when it exists for this same run (weights, images, settings), the finished units
            are loaded and the run continues with the next one, giving the uninterrupted result.
            A checkpoint of another run is refused (ValueError). The caller deletes it when done.
        on_unit_done: called as ``f(units_done, num_units)`` after each unit (and its checkpoint).
        layer_bits: per-layer ``{name: (weight bits, act bits)}`` overriding wbits / abits (a plan
            from :func:`zsq_engine.quant.bit_allocation.plan_bits`).
        act_init: where the activation ranges start: 'data' (the 'mse' observer on ``data``) or
            'bn' (DFQ's data-free ranges from ``model``'s BatchNorm statistics, mean +- 6 std through
            the activations, :func:`zsq_engine.synth_free.set_bn_activation_ranges`; layers the BN
            statistics say nothing about keep the 'data' ranges). Reconstruction then adjusts them.
        bias_correction: before calibration and reconstruction, correct each layer's bias for
            its nearest-rounding weight error from ``model``'s BN statistics
            (:func:`zsq_engine.synth_free.bias_correct`, DFQ's analytic step). Reconstruction keeps
            the corrected biases and learns the rounding around them.
        overrides: further :class:`ReconConfig` fields (e.g. ``round_weight=0.1``).
    Returns a :class:`ReconResult` (``meta['resumed_units']``: units taken from the checkpoint).
    """
    check_bits(wbits, "wbits")
    check_bits(abits, "abits")
    if act_init not in ACT_INITS:
        raise ValueError(f"act_init must be one of {ACT_INITS}, got {act_init!r}")
    cfg = make_config(method, preset, iters=iters, batch_size=batch_size, mobilenet=has_mobilenet_blocks(model),
                      **overrides)
    from .distributed import ReconWorld

    world = ReconWorld(torch.device(device))
    try:
        return _reconstruct(world, model, data, wbits, abits, cfg, method, preset, num, seed, units,
                            first_last_bits, offload, show_progress, checkpoint, on_unit_done, layer_bits, act_init,
                            bias_correction)
    finally:
        world.close()


def _reconstruct(world, model, data, wbits, abits, cfg, method, preset, num, seed, units, first_last_bits, offload,
                 show_progress, checkpoint, on_unit_done, layer_bits, act_init="data",
                 bias_correction=False) -> ReconResult:
    device = world.device
    if world.size > 1 and cfg.batch_size < world.size:
        raise ValueError(f"batch_size {cfg.batch_size} is smaller than the {world.size} processes sharing each batch")
    show_progress = show_progress and world.rank == 0
    images = _as_images(data)
    num = PRESETS[preset]["num"] if num is None else int(num)
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    images = images[:num]
    t_start = time.perf_counter()

    fp = fold_model_bn(copy.deepcopy(model)).to(device).eval()
    qmodel = quantize_model(model, wbits, abits, first_last_bits=first_last_bits, weight_method="mse",
                            act_method="mse").to(device).eval()
    if layer_bits:
        apply_bit_plan(qmodel, layer_bits, weight_method="mse")
    if bias_correction:
        # measured on EfficientNet-Lite0 W4A8 after DFQ (docs/accuracy.md): the start is 7.4 %
        # top-1 without it, 80.0 % with it; lazily imported, synth_free sits beside recon
        from ..synth_free import bias_correct

        bias_correct(qmodel.cpu(), model)
        qmodel.to(device)
    calib = [images[i:i + 128] for i in range(0, images.shape[0], 128)]
    calibrate_activations(qmodel, calib, progress=False)
    if act_init == "bn":
        # the BN ranges beat ranges observed on a few synthetic images (EfficientNet-Lite0, DFQ
        # W4A8 without reconstruction: 81.0 vs 80.0 %, docs/accuracy.md)
        from ..synth_free import set_bn_activation_ranges

        set_bn_activation_ranges(qmodel.cpu(), model)
        qmodel.to(device)
    unit_list: List[Unit] = partition(qmodel, units)

    if offload is None:
        offload = False
        if device.type == "cuda":
            offload = _estimate_cache_bytes(fp, unit_list, images[:2]) * images.shape[0] / 2 > 2 * 2 ** 30
    store = torch.device("cpu") if offload else device

    reports, skipped = [], []
    start = 0
    fingerprint = None
    if checkpoint is not None:
        from .resume import load_progress, run_fingerprint

        fingerprint = run_fingerprint(model, images, {
            "method": method, "wbits": wbits, "abits": abits, "first_last_bits": first_last_bits, "seed": seed,
            "config": asdict(cfg), "units": [u.name for u in unit_list],
            "layer_bits": {k: list(v) for k, v in sorted((layer_bits or {}).items())},
            **({"act_init": act_init} if act_init != "data" else {}),
            **({"bias_correction": True} if bias_correction else {})})
        saved = load_progress(checkpoint, fingerprint)
        if saved is not None:
            qmodel.load_state_dict(saved["state_dict"], strict=True)
            reports, skipped, start = list(saved["reports"]), list(saved["skipped"]), int(saved["done"])
    calls = _call_counts(qmodel, [u.name for u in unit_list], images[:1].to(device))
    run_bar = RunProgress(unit_work(qmodel, [u.name for u in unit_list], images[:1].to(device)),
                          [u.name for u in unit_list[:start]], f"{method} {len(unit_list)} units",
                          show_progress)
    try:
        reports, skipped = _reconstruct_units(world, fp, qmodel, unit_list, start, calls, images, store, cfg,
                                              method, seed, show_progress, checkpoint, fingerprint, reports,
                                              skipped, on_unit_done, run_bar)
    finally:
        run_bar.close()
    # the learned grids are final now: keep the biases where integer engines can add them
    snapped = snap_biases(qmodel)
    meta = {"method": method, "preset": preset, "wbits": wbits, "abits": abits, "first_last_bits": first_last_bits,
            "seed": seed, "num_samples": int(images.shape[0]), "config": asdict(cfg),
            "units": [u.name for u in unit_list], "skipped_units": skipped, "resumed_units": start,
            "world_size": world.size, "rank": world.rank, "seconds": round(time.perf_counter() - t_start, 2),
            "biases_on_accumulator_grid": len(snapped), "act_init": act_init,
            "bias_correction": bool(bias_correction)}
    return ReconResult(qmodel.eval(), reports, meta)


def _reconstruct_units(world, fp, qmodel, unit_list, start, calls, images, store, cfg, method, seed, show_progress,
                       checkpoint, fingerprint, reports, skipped, on_unit_done, run_bar):
    """Reconstruct ``unit_list[start:]`` in order; returns the updated ``(reports, skipped)``."""
    for k, unit in enumerate(unit_list):
        if k < start:
            continue
        try:
            if calls[unit.name] != 1:
                raise UnsupportedUnitError(f"unit {unit.name!r} ({unit.type_name}) is called {calls[unit.name]} "
                                           "times per forward; block reconstruction needs exactly one call")
            x_fp, y_fp = capture_unit_io(fp, unit.name, images, store_device=store)
            x_q, _ = capture_unit_io(qmodel, unit.name, images, want_output=False, store_device=store)
        except UnsupportedUnitError as exc:
            # e.g. a layer called twice per forward: its cached input / output are ambiguous, so it
            # keeps its calibrated (naive) quantization and the other units still run
            skipped.append({"name": unit.name, "type": unit.type_name, "reason": str(exc)})
            warnings.warn(f"reconstruction skips unit {unit.name!r} ({unit.type_name}): {exc}", stacklevel=2)
            _unit_done(checkpoint, fingerprint, qmodel, reports, skipped, k + 1, len(unit_list), on_unit_done, world)
            run_bar.unit_done(unit.name)
            continue
        info = reconstruct_unit(qmodel.get_submodule(unit.name), x_fp, y_fp, x_q, cfg, seed=seed,
                                desc=f"{method} [{k + 1}/{len(unit_list)}] {unit.name}",
                                show_progress=show_progress, world=world)
        reports.append({"name": unit.name, "type": unit.type_name, **info})
        del x_fp, y_fp, x_q
        _unit_done(checkpoint, fingerprint, qmodel, reports, skipped, k + 1, len(unit_list), on_unit_done, world)
        run_bar.unit_done(unit.name)
    return reports, skipped


def _unit_done(checkpoint, fingerprint, qmodel, reports, skipped, done, total, on_unit_done, world) -> None:
    if checkpoint is not None:
        from .resume import save_progress

        if world.rank == 0:  # every process holds the same model
            save_progress(checkpoint, fingerprint, qmodel, reports, skipped, done)
        world.barrier()
    if on_unit_done is not None:
        on_unit_done(done, total)


@torch.no_grad()
def _call_counts(model: nn.Module, names: List[str], sample: torch.Tensor) -> Dict[str, int]:
    """How often each named submodule runs in one forward of ``sample`` (shared modules, loops)."""
    counts = {n: 0 for n in names}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda _m, _a, _o, n=n: counts.__setitem__(n, counts[n] + 1)) for n in names]
    try:
        model(sample)
    finally:
        for h in handles:
            h.remove()
    return counts


@torch.no_grad()
def _estimate_cache_bytes(fp: nn.Module, unit_list: List[Unit], sample: torch.Tensor) -> int:
    total = 0
    for u in unit_list:
        x, y = capture_unit_io(fp, u.name, sample)
        total += 2 * x.numel() * x.element_size() + y.numel() * y.element_size()
    return total
