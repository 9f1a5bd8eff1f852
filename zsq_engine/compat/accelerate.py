"""``accelerate(model)``: route the research quantizers inside a model through the fused ops.

Each recognised quantizer (see :mod:`.detect`) keeps its class, attributes, Parameter objects,
buffers, ``state_dict`` keys and lazy-initialisation logic: only its ``forward`` is replaced, on
the instance, by a :class:`FusedForward` that runs the fused version and falls back to the
class's own forward for anything the fused ops do not take. ``restore()`` (or leaving the ``with`` block)
deletes those instance forwards again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

from torch import nn

from . import brecq, genie, qdrop, torch_ao
from .fast import FAST_FORWARDS
from .detect import detect, looks_like_quantizer

FORWARDS: Dict[str, Callable] = {
    "brecq_uniform": brecq.uniform_affine_forward,
    "brecq_adaround": brecq.adaround_forward,
    "qdrop_lsq": qdrop.lsq_forward,
    "qdrop_lsq_plus": qdrop.lsq_plus_forward,
    "qdrop_fixed": qdrop.fixed_forward,
    "genie_weight": genie.weight_forward,
    "genie_activation": genie.activation_forward,
    "torch_ao_fake_quantize": torch_ao.fake_quantize_forward,
    "torch_ao_learnable": torch_ao.learnable_fake_quantize_forward,
}


def _class_forward(module, *args, **kwargs):
    return type(module).forward(module, *args, **kwargs)


class FusedForward:
    """The instance ``forward`` that :func:`accelerate` installs: the style's fused forward.

    A plain object (not a bound ``functools.partial``) so that ``torch.save(model)``, pickling
    and ``copy.deepcopy`` keep working: the module reference goes through pickle's memo, and a
    deep copy's forward is bound to the copy.
    """

    __slots__ = ("module", "style", "exact")

    def __init__(self, module: nn.Module, style: str, exact: bool = True):
        self.module, self.style, self.exact = module, style, exact

    def __call__(self, *args, **kwargs):
        fast = None if self.exact else FAST_FORWARDS.get(self.style)
        if fast is None:
            return FORWARDS[self.style](self.module, *args, original=_class_forward, **kwargs)
        return fast(self.module, *args, original=self._exact, **kwargs)

    def _exact(self, module, *args, **kwargs):
        return FORWARDS[self.style](module, *args, original=_class_forward, **kwargs)

    def __getstate__(self):
        return {"module": self.module, "style": self.style, "exact": self.exact}

    def __setstate__(self, state):
        self.module, self.style = state["module"], state["style"]
        self.exact = state.get("exact", True)


def _patched_style(module: nn.Module):
    fwd = module.__dict__.get("forward")
    return fwd.style if isinstance(fwd, FusedForward) else None


def _patch(module: nn.Module, style: str, exact: bool) -> None:
    module.forward = FusedForward(module, style, exact)


def _unpatch(module: nn.Module) -> bool:
    if _patched_style(module) is None:
        return False
    del module.forward
    return True


@dataclass
class AccelerationReport:
    """What :func:`accelerate` did. Also a context manager: leaving the block restores.

    ``accelerated``: ``(module name, style)``; ``skipped``: ``(module name, class name, reason)``.
    """

    accelerated: List[Tuple[str, str]] = field(default_factory=list)
    exact: bool = True
    skipped: List[Tuple[str, str, str]] = field(default_factory=list)
    _modules: List[nn.Module] = field(default_factory=list, repr=False)

    def restore(self) -> int:
        """Give every module accelerated by this call its own forward back; returns how many."""
        count = sum(_unpatch(m) for m in self._modules)
        self._modules.clear()
        return count

    def __enter__(self) -> "AccelerationReport":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def __str__(self) -> str:
        mode = "" if self.exact else " (exact=False: fused, last-bit tolerance)"
        lines = [f"zsq_engine.compat: {len(self.accelerated)} quantizer(s) accelerated{mode}, "
                 f"{len(self.skipped)} left alone"]
        lines += [f"  + {name or '(root)'}: {style}" for name, style in self.accelerated]
        lines += [f"  - {name or '(root)'} ({cls}): {reason}" for name, cls, reason in self.skipped]
        return "\n".join(lines)


def accelerate(model: nn.Module, *, exact: bool = True) -> AccelerationReport:
    """Swap the forward of every recognised quantizer in ``model`` (itself included) for a fused one.

    ``exact=True`` (default) keeps the original's numerics bit for bit (its own division by the
    step stays a torch op). ``exact=False`` runs BRECQ uniform and QDrop LSQ / LSQ+ quantizers
    as one fused kernel per direction: the same formulas, but a value on a rounding tie may
    land one step away and QDrop masks come from the fused generator (see :mod:`.fast`).

    Returns an :class:`AccelerationReport`; use it as ``with accelerate(model): ...`` to undo on
    exit, or call ``report.restore()`` / :func:`restore`. Calling it twice is harmless: modules
    already accelerated are listed again, not patched twice. Unknown classes whose name says
    they quantize or round are left alone and listed with the reason.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be a bool, got {type(exact).__name__}")
    report = AccelerationReport(exact=exact)
    found: Dict[str, Tuple[str, str]] = {}  # name -> ("ok", style) | ("skip", reason)
    for name, module in model.named_modules():
        style, reason = detect(module)
        if style is not None:
            found[name] = ("ok", style)
        elif reason is not None:
            found[name] = ("skip", reason)
        elif looks_like_quantizer(module):
            found[name] = ("unknown", "")
    modules = dict(model.named_modules())
    for name, (kind, what) in found.items():
        module = modules[name]
        if kind == "ok":
            if _patched_style(module) is None:
                _patch(module, what, exact)
                report._modules.append(module)
            report.accelerated.append((name, what))
        elif kind == "skip":
            report.skipped.append((name, type(module).__name__, what))
        elif not any(other != name and other.startswith(f"{name}." if name else "") for other in found):
            # a name like "QuantModule" that holds quantizers is a layer, not an unknown quantizer
            report.skipped.append((name, type(module).__name__, "unknown quantizer class: no known attribute pattern"))
    return report


def restore(model: nn.Module) -> int:
    """Give every accelerated module inside ``model`` its own forward back; returns how many."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(_unpatch(m) for m in model.modules())
