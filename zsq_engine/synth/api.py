"""``synthesize(...)``: one entry point for every synthesis method, with presets, resumable
output files and data-parallel runs under ``torchrun``.

Batch b is generated from its own seed derived from (seed, b), so the images do not depend on
which process computes a batch, on resuming, or on the order of batches.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from . import gdfq, genie, hast, zeroq
from ..utils import frozen_teacher, model_fingerprint, save_torch_atomic
from .io import FORMAT_VERSION, PartStore, check_writable_output, identity_mismatch, load_output

__all__ = ["METHODS", "PRESETS", "SynthResult", "synthesize", "batch_seed", "resolve_settings"]

METHODS = ("genie", "zeroq", "gdfq", "hast")

# Per method: images per batch, default number of images and the method settings.
# 'paper' follows the publications (docs METHODS.md); 'fast' makes a usable Fashion-MNIST set in
# well under a minute on 2 CPU cores (timings in the synth test / report).
PRESETS = {
    "paper": {
        "zeroq": {"num": 1024, "batch_size": 64, "settings": dict(zeroq.DEFAULTS)},
        "genie": {"num": 1024, "batch_size": 128, "settings": dict(genie.DEFAULTS)},
        "gdfq": {"num": 1024, "batch_size": 128, "settings": dict(gdfq.DEFAULTS)},
        "hast": {"num": 1024, "batch_size": 256, "settings": dict(hast.DEFAULTS)},
    },
    "fast": {
        "zeroq": {"num": 128, "batch_size": 64, "settings": {**zeroq.DEFAULTS, "iters": 60, "patience": 15}},
        "genie": {"num": 128, "batch_size": 64, "settings": {**genie.DEFAULTS, "iters": 50, "patience": 15,
                                                             "gamma_every": 10}},
        "gdfq": {"num": 128, "batch_size": 64, "settings": {**gdfq.DEFAULTS, "iters": 80,
                                                            "train_batch_size": 32}},
        "hast": {"num": 128, "batch_size": 64, "settings": {**hast.DEFAULTS, "iters": 60, "patience": 10}},
    },
}


@dataclass
class SynthResult:
    """``images`` float32 [N, C, H, W] in the model's normalised input space; ``labels`` int64 [N]
    (gdfq, hast) or None (zeroq, genie); ``meta`` as stored in the output file."""
    images: torch.Tensor
    labels: Optional[torch.Tensor]
    meta: dict
    computed: tuple = ()  # batch indices this process synthesized in this call (resumed ones excluded)
    rank: int = 0
    world_size: int = 1


def batch_seed(seed: int, index: int) -> int:
    """A 63-bit seed for batch ``index`` (or stage -1: the GDFQ generator) of a run with ``seed``."""
    digest = hashlib.sha256(f"zsq-synth:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def resolve_settings(method: str, preset: str, iters: Optional[int] = None, **overrides) -> dict:
    """The method settings of ``preset`` with ``iters`` and any named overrides applied."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    settings = dict(PRESETS[preset][method]["settings"])
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ValueError(f"unknown {method} setting(s) {unknown}; valid: {sorted(settings)}")
    settings.update(overrides)
    if iters is not None:
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        settings["iters"] = int(iters)
    return settings


def _resolve_teacher(model, input_shape, num_classes):
    from ..models import get_model, get_model_info

    if isinstance(model, str):
        info = get_model_info(model)  # ValueError naming the valid models
        return model, get_model(model, pretrained=True), tuple(info.input_shape), info.num_classes
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a registered model name or an nn.Module, got {type(model).__name__}")
    if input_shape is None or num_classes is None:
        raise ValueError("pass input_shape=(C, H, W) and num_classes= when giving a model object")
    return type(model).__name__, model, tuple(input_shape), int(num_classes)


class _World:
    """Rank/world size; initialises torch.distributed under torchrun (WORLD_SIZE > 1)."""

    def __init__(self, device: torch.device) -> None:
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank, self.owned = 0, False
        self.device = device
        if self.size <= 1:
            self.size = 1
            return
        import torch.distributed as dist

        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            self.device = torch.device("cuda", local if device.index is None else device.index)
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owned = True
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run_batch(method, teacher, b, n, input_shape, num_classes, settings, seed, device, show_progress,
               generator) -> dict:
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(batch_seed(seed, b))
        desc = f"{method} batch {b}"
        if method == "gdfq":
            r = gdfq.synthesize_batch(teacher, n, generator, device)
        else:
            module = {"zeroq": zeroq, "genie": genie, "hast": hast}[method]
            r = module.synthesize_batch(teacher, n, input_shape, num_classes, settings, device, show_progress, desc)
    return {"images": r.images.contiguous(), "labels": r.labels, "bn_loss_start": r.bn_loss_start,
            "bn_loss_end": r.bn_loss_end}


def _train_gdfq(teacher, input_shape, num_classes, settings, seed, device, show_progress):
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(batch_seed(seed, -1))
        gen, losses = gdfq.train_generator(teacher, settings["iters"], input_shape, num_classes,
                                           settings["train_batch_size"], device, settings,
                                           show_progress=show_progress)
    return gen, losses


def synthesize(model: Union[str, nn.Module], method: str, num: Optional[int] = None,
               batch_size: Optional[int] = None, iters: Optional[int] = None, seed: int = 0,
               device: Union[str, torch.device] = "cpu", preset: str = "paper", out=None,
               overwrite: bool = False, show_progress: bool = False,
               on_batch_done: Optional[Callable[[int, int], None]] = None,
               input_shape: Optional[Sequence[int]] = None, num_classes: Optional[int] = None,
               **overrides) -> SynthResult:
    """Synthesize ``num`` images for ``model`` with ``method`` ('genie', 'zeroq', 'gdfq', 'hast').

    Args:
        model: registered model name (pretrained weights are loaded) or an nn.Module (then give
            ``input_shape`` (C, H, W) and ``num_classes``); it is frozen during synthesis and
            restored afterwards (it is moved to ``device``).
        num, batch_size, iters: images, images per batch, iterations per batch (gdfq: generator
            training steps); None takes the preset's value.
        seed: batch b uses a seed derived from (seed, b).
        preset: 'paper' (published defaults) or 'fast' (short runs for small models on a CPU).
        out: output file; with it the run is resumable (parts in ``<out>.parts``) and may be
            distributed across ``torchrun`` processes. A finished file with the same settings is
            returned as it is; different settings are refused unless ``overwrite``.
        on_batch_done: called as ``f(batch_index, num_batches)`` after each batch is stored.
        **overrides: method settings (e.g. ``lr=0.1``); see :data:`PRESETS`.

    Returns a :class:`SynthResult` (on every rank in a distributed run).
    """
    settings = resolve_settings(method, preset, iters, **overrides)
    p = PRESETS[preset][method]
    num = p["num"] if num is None else int(num)
    batch_size = p["batch_size"] if batch_size is None else int(batch_size)
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (batch statistics need two images), got {batch_size}")
    device = torch.device(device)
    name, teacher, input_shape, num_classes = _resolve_teacher(model, input_shape, num_classes)
    teacher = teacher.to(device)
    num_batches = -(-num // batch_size)
    sizes = [min(batch_size, num - b * batch_size) for b in range(num_batches)]
    if sizes[-1] < 2:  # fold a single leftover image into the previous batch
        sizes = sizes[:-2] + [sizes[-2] + sizes[-1]] if len(sizes) > 1 else sizes
        num_batches = len(sizes)
        if sizes[-1] < 2:
            raise ValueError("num must be >= 2 (batch statistics need two images)")

    from .. import __version__

    identity = {"format": FORMAT_VERSION, "model": name, "model_fingerprint": model_fingerprint(teacher),
                "method": method, "preset": preset, "settings": settings, "seed": int(seed), "num": num,
                "batch_size": batch_size}
    meta_base = {**identity, "version": __version__, "input_shape": list(input_shape), "num_classes": num_classes}

    world = _World(device)
    device = world.device
    teacher = teacher.to(device)
    try:
        if out is None:
            if world.size > 1:
                raise ValueError("a distributed synthesis run needs an output file (out=)")
            return _in_memory(method, teacher, sizes, input_shape, num_classes, settings, seed, device,
                              show_progress, on_batch_done, meta_base)
        return _to_file(Path(out), overwrite, world, identity, meta_base, method, teacher, sizes, input_shape,
                        num_classes, settings, seed, device, show_progress, on_batch_done)
    finally:
        world.close()


def _in_memory(method, teacher, sizes, input_shape, num_classes, settings, seed, device, show_progress,
               on_batch_done, meta_base) -> SynthResult:
    parts = []
    with frozen_teacher(teacher):
        gen, gen_losses = (None, None)
        if method == "gdfq":
            gen, gen_losses = _train_gdfq(teacher, input_shape, num_classes, settings, seed, device, show_progress)
        for b, n in enumerate(sizes):
            parts.append(_finish_part(_run_batch(method, teacher, b, n, input_shape, num_classes, settings, seed,
                                                 device, show_progress, gen), gen_losses))
            if on_batch_done is not None:
                on_batch_done(b, len(sizes))
    merged = _merge(parts, meta_base, gen_losses)
    return SynthResult(merged["images"], merged["labels"], merged["meta"], tuple(range(len(sizes))))


def _finish_part(part: dict, gen_losses: Optional[dict]) -> dict:
    if gen_losses is not None:  # gdfq: the start value is the untrained generator's
        part["bn_loss_start"] = gen_losses["bn_loss_start"]
    return part


def _merge(parts, meta_base, gen_losses) -> dict:
    images = torch.cat([p["images"] for p in parts])
    labels = None if parts[0]["labels"] is None else torch.cat([p["labels"] for p in parts])
    meta = {**meta_base, "bn_loss_start": [float(p["bn_loss_start"]) for p in parts],
            "bn_loss_end": [float(p["bn_loss_end"]) for p in parts]}
    if gen_losses is not None:
        meta["generator_bn_loss"] = dict(gen_losses)
    return {"images": images, "labels": labels, "meta": meta}


def _to_file(out: Path, overwrite, world, identity, meta_base, method, teacher, sizes, input_shape, num_classes,
             settings, seed, device, show_progress, on_batch_done) -> SynthResult:
    check_writable_output(out)
    store = PartStore(out)
    if out.exists() and not overwrite:
        done = load_output(out)
        why = identity_mismatch({k: done["meta"].get(k) for k in identity}, identity)
        if why:
            raise ValueError(f"{out} already holds a synthesis run with other settings ({why}); "
                             "pass --overwrite (overwrite=True) to replace it")
        return SynthResult(done["images"], done["labels"], done["meta"])
    stored = store.stored_identity()
    if stored is not None and not overwrite:
        why = identity_mismatch(stored, identity)
        if why:
            raise ValueError(f"{store.dir} holds an unfinished run with other settings ({why}); rerun with the "
                             "same settings to resume it, or pass --overwrite (overwrite=True) to start over")
    world.barrier()  # every rank has checked before rank 0 touches anything
    if world.rank == 0:
        if overwrite:
            store.remove()
            if out.exists():
                out.unlink()
        store.reset(identity)
    world.barrier()

    with frozen_teacher(teacher):
        gen, gen_losses = None, None
        if method == "gdfq":
            saved = store.read_extra("generator.pt")
            if saved is None and world.rank == 0:
                gen, gen_losses = _train_gdfq(teacher, input_shape, num_classes, settings, seed, device, show_progress)
                store.write_extra("generator.pt", {"state_dict": gen.state_dict(), "losses": gen_losses})
            world.barrier()
            if gen is None:
                saved = store.read_extra("generator.pt")
                gen = gdfq.GDFQGenerator(input_shape, num_classes, settings["latent_dim"])
                gen.load_state_dict(saved["state_dict"])
                gen = gen.to(device)
                gen_losses = {k: float(v) for k, v in saved["losses"].items()}
        computed = []
        for b in range(world.rank, len(sizes), world.size):
            if store.has_batch(b):
                continue
            computed.append(b)
            part = _finish_part(_run_batch(method, teacher, b, sizes[b], input_shape, num_classes, settings, seed,
                                           device, show_progress, gen), gen_losses)
            store.write_batch(b, part)
            if on_batch_done is not None:
                on_batch_done(b, len(sizes))
    world.barrier()
    if world.rank == 0:
        merged = _merge([store.read_batch(b) for b in range(len(sizes))], meta_base, gen_losses)
        save_torch_atomic(merged, out)
        store.remove()
    world.barrier()
    done = load_output(out)
    return SynthResult(done["images"], done["labels"], done["meta"], tuple(computed), world.rank, world.size)
