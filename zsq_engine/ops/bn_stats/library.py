"""The torch.library ops of the BN-statistics loss family (namespace ``zsq``).

Primitives (:func:`..schema.define_op`): ``bn_stats_forward`` -> (loss, saved) and
``bn_stats_backward``; the same names in ``reference.py``, ``kernels/bn_stats.py`` and
``csrc/bind/bn_stats.cpp`` (``_C.<name>_cpu``). The backends take a :class:`BNLossSpec`; the
schemas carry it as plain scalars (:func:`_spec_scalars`).

Differentiable op: ``bn_stat_loss_op`` = ``zsq::bn_stat_loss`` -> (loss, saved), ``saved`` the fp32 [3, G] table of
per-group (mean, A, B) every backend's backward consumes (layout in ``reference.py``), with its
backward op ``zsq::bn_stat_loss_backward``.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from ..dispatch import dispatch, register
from ..schema import call, define_differentiable_op, define_op
from . import reference as _ref
from .reference import BNLossSpec

_NORMALIZE_NAMES = ("channels", "batch", "mean")
_SPEC = ("bool per_image, bool use_std, bool unbiased, float std_eps, bool eps_in_std, int normalize, "
         "bool layer_mean")


def _spec_scalars(spec: BNLossSpec) -> tuple:
    return (bool(spec.per_image), bool(spec.use_std), bool(spec.unbiased), float(spec.std_eps),
            bool(spec.eps_in_std), _NORMALIZE_NAMES.index(spec.normalize), spec.layer_reduction == "mean")


def _spec_from_scalars(per_image: bool, use_std: bool, unbiased: bool, std_eps: float, eps_in_std: bool,
                       normalize: int, layer_mean: bool) -> BNLossSpec:
    return BNLossSpec(per_image=per_image, use_std=use_std, unbiased=unbiased, std_eps=std_eps,
                      eps_in_std=eps_in_std, normalize=_NORMALIZE_NAMES[normalize],
                      layer_reduction="mean" if layer_mean else "sum")


def _num_groups(activations: List[Tensor], per_image: bool):
    return sum(a.shape[0] * a.shape[1] if per_image else a.shape[1] for a in activations)


def _forward_fake(activations, running_means, running_vars, per_image, *rest):
    a0 = activations[0]
    return (a0.new_empty((), dtype=torch.float32),
            a0.new_empty((3, _num_groups(activations, per_image)), dtype=torch.float32))


def _backward_fake(grad_out, activations, saved, *rest):
    return [torch.empty_like(a, memory_format=torch.contiguous_format) for a in activations]


# the whole loss as one formula: the op-level oracle of the tests
register("bn_stat_loss", "reference")(_ref.bn_stat_loss)
register("bn_stats_forward", "reference")(_ref.bn_stats_forward)
register("bn_stats_backward", "reference")(_ref.bn_stats_backward)
BN_STATS_FORWARD = define_op(
    "bn_stats_forward", f"(Tensor[] activations, Tensor[] running_means, Tensor[] running_vars, {_SPEC}) "
    "-> (Tensor, Tensor)", _ref.bn_stats_forward, _forward_fake,
    to_primitive=lambda acts, means, vars_, *spec: (acts, means, vars_, _spec_from_scalars(*spec)))
BN_STATS_BACKWARD = define_op(
    "bn_stats_backward", f"(Tensor grad_out, Tensor[] activations, Tensor saved, {_SPEC}) -> Tensor[]",
    _ref.bn_stats_backward, _backward_fake,
    to_primitive=lambda grad_out, acts, saved, *spec: (grad_out, acts, saved, _spec_from_scalars(*spec)))
PRIMITIVES = (BN_STATS_FORWARD, BN_STATS_BACKWARD)


def _bn_stat_loss_impl(activations: List[Tensor], running_means: List[Tensor], running_vars: List[Tensor],
                       per_image: bool, use_std: bool, unbiased: bool, std_eps: float, eps_in_std: bool,
                       normalize: int, layer_mean: bool) -> Tuple[Tensor, Tensor]:
    spec = _spec_from_scalars(per_image, use_std, unbiased, std_eps, eps_in_std, normalize, layer_mean)
    fn = dispatch("bn_stats_forward", activations[0].device)
    loss, saved = fn([a.detach().contiguous() for a in activations], [m.detach() for m in running_means],
                     [v.detach() for v in running_vars], spec)
    return loss.float().reshape(()), saved.float().contiguous()


def _bn_stat_loss_backward_impl(grad_out: Tensor, activations: List[Tensor], saved: Tensor, per_image: bool,
                                use_std: bool, unbiased: bool, std_eps: float, eps_in_std: bool, normalize: int,
                                layer_mean: bool) -> List[Tensor]:
    spec = _spec_from_scalars(per_image, use_std, unbiased, std_eps, eps_in_std, normalize, layer_mean)
    fn = dispatch("bn_stats_backward", activations[0].device)
    grads = fn(grad_out.detach().float().reshape(()), [a.detach().contiguous() for a in activations],
               saved.detach().contiguous(), spec)
    return [g.to(a.dtype).reshape(a.shape) for g, a in zip(grads, activations)]


bn_stat_loss_op = define_differentiable_op("bn_stat_loss", _bn_stat_loss_impl, _forward_fake)
_bn_stat_loss_backward_op = define_differentiable_op(
    "bn_stat_loss_backward", _bn_stat_loss_backward_impl,
    lambda grad_out, activations, saved, *rest: [torch.empty_like(a, memory_format=torch.contiguous_format)
                                                 for a in activations])


def _bn_setup(ctx, inputs, output):
    activations = inputs[0]
    ctx.num_layers = len(activations)
    ctx.scalars = tuple(inputs[3:])
    ctx.save_for_backward(*activations, output[1])
    ctx.mark_non_differentiable(output[1])


def _bn_backward(ctx, grad_loss, _grad_saved):
    *activations, saved = ctx.saved_tensors
    grads = call(ctx, _bn_stat_loss_backward_op)(grad_loss, activations, saved, *ctx.scalars)
    none_list = [None] * ctx.num_layers
    return (list(grads), none_list, list(none_list)) + (None,) * 7


# No eager fast path (with_eager_path): an autograd.Function does not see tensors inside the
# activation list, so the op itself carries the autograd formula on both paths.
torch.library.register_autograd(bn_stat_loss_op, _bn_backward, setup_context=_bn_setup)
