"""Forward hooks and teacher freezing shared by synthesis and QAT.

* :func:`frozen_teacher` puts the teacher in eval mode with ``requires_grad=False`` on all its
  parameters for the whole synthesis and restores both afterwards (even on error);
* :class:`ModuleRecorder` keeps one tensor per watched module from the last forward (hooks that
  exist only inside a ``with`` block); QAT's feature taps build on it too;
* :class:`BNInputRecorder` hooks every BatchNorm1d/2d (forward *pre*-hooks, so it sees the BN
  input, not its output) and hands the recorded inputs and the layers' running statistics to
  :func:`zsq_engine.ops.bn_stat_loss` in the order it expects.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Tuple

import torch
from torch import nn

__all__ = ["frozen_teacher", "ModuleRecorder", "BNInputRecorder", "bn_layers"]

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


def bn_layers(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm1d/2d layers of ``model`` that carry running statistics, in module order."""
    return [m for m in model.modules()
            if isinstance(m, _BN_TYPES) and m.track_running_stats and m.running_mean is not None]


@contextlib.contextmanager
def frozen_teacher(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode + frozen parameters inside the block; the previous flags come back afterwards.

    Freezing matters twice: no gradient is accumulated into the teacher (memory, and a teacher
    that later gets fine-tuned must not inherit stray ``.grad``), and BN layers in eval mode
    normalise with the running statistics that the synthesis objective targets.
    """
    was_training = {m: m.training for m in model.modules()}
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grad_flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        for m, flag in was_training.items():
            m.training = flag


class ModuleRecorder:
    """Base of the hook-based recorders: one tensor per watched module from the last forward.

    Subclasses set ``pre_hook`` (record the module's input: forward *pre*-hook) or not (record
    its output: forward hook) and may override :meth:`_keep` to reshape what they store. Used as
    a context manager: the hooks exist only inside the ``with`` block, and leaving it drops the
    recorded tensors (and the autograd graphs they keep alive).
    """

    pre_hook = False

    def __init__(self, modules) -> None:
        self._watched = list(modules)
        self._values: List[torch.Tensor] = [None] * len(self._watched)  # type: ignore[list-item]
        self._handles: list = []

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _hook_for(self, index: int):
        if self.pre_hook:
            def hook(_module, args):
                self._values[index] = self._keep(args[0])
        else:
            def hook(_module, _args, out):
                self._values[index] = self._keep(out)
        return hook

    def __enter__(self):
        register = "register_forward_pre_hook" if self.pre_hook else "register_forward_hook"
        self._handles = [getattr(m, register)(self._hook_for(i)) for i, m in enumerate(self._watched)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()

    def clear(self) -> None:
        """Drop the recorded tensors (and the graphs they keep alive)."""
        self._values = [None] * len(self._watched)  # type: ignore[list-item]

    def _missing(self) -> List[int]:
        return [i for i, v in enumerate(self._values) if v is None]


class BNInputRecorder(ModuleRecorder):
    """Context manager recording the input of every BN layer during forward passes.

    Usage::

        with BNInputRecorder(teacher) as rec:
            rec.clear(); logits = teacher(x)
            loss = ops.bn_stat_loss(*rec.loss_inputs(), variant="genie")

    ``loss_inputs()`` returns ``(activations, running_means, running_vars)``: lists of
    ``[N, C, H, W]`` (or ``[N, C]``) tensors still attached to the autograd graph, and ``[C]``
    buffers. A 3-D BatchNorm1d input ``[N, C, L]`` is passed on as ``[N, C, L, 1]``.
    """

    pre_hook = True

    def __init__(self, model: nn.Module) -> None:
        self.layers = bn_layers(model)
        if not self.layers:
            raise ValueError("the model has no BatchNorm1d/2d layer with running statistics; "
                             "BN-statistics synthesis needs at least one")
        super().__init__(self.layers)

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1) if x.dim() == 3 else x

    def loss_inputs(self) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        missing = self._missing()
        if missing:
            raise RuntimeError(f"BN layers {missing} saw no input in the last forward (was the model run "
                               "inside the recorder?)")
        return (list(self._values), [layer.running_mean for layer in self.layers],
                [layer.running_var for layer in self.layers])
