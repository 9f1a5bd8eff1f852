"""Public BatchNorm-statistics loss (see :mod:`zsq_engine.ops.reference.bn_stats` for the variants)."""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..opspec import checks
from .dispatch import dispatch, register
from .reference import bn_stats as _ref
from .reference.bn_stats import VARIANTS, BNLossSpec
from .reference.bn_stats import bn_stat_loss as _ref_bn_stat_loss

# The whole loss (kept as the op-level oracle) and the two primitives the custom op runs.
register("bn_stat_loss", "reference")(_ref_bn_stat_loss)
register("bn_stats_forward", "reference")(_ref.bn_stats_forward)
register("bn_stats_backward", "reference")(_ref.bn_stats_backward)

_NORMALIZE_NAMES = ("channels", "batch", "mean")


def resolve_bn_loss_spec(variant: Union[str, BNLossSpec]) -> BNLossSpec:
    if isinstance(variant, BNLossSpec):
        spec = variant
    elif variant in VARIANTS:
        spec = VARIANTS[variant]
    else:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)} or a BNLossSpec, got {variant!r}")
    if spec.normalize not in ("channels", "batch", "mean"):
        raise ValueError(f"BNLossSpec.normalize must be 'channels', 'batch' or 'mean', got {spec.normalize!r}")
    if spec.layer_reduction not in ("sum", "mean"):
        raise ValueError(f"BNLossSpec.layer_reduction must be 'sum' or 'mean', got {spec.layer_reduction!r}")
    return spec


def bn_stat_loss(activations: Sequence[torch.Tensor], running_means: Sequence[torch.Tensor],
                 running_vars: Sequence[torch.Tensor], variant: Union[str, BNLossSpec] = "genie") -> torch.Tensor:
    """Distance between the statistics of BN inputs and the BN running statistics (fp32 scalar).

    ``activations[i]``: [N, C_i, H, W] or [N, C_i] in fp32/fp16/bf16 (the input of BN layer i);
    ``running_means[i]`` / ``running_vars[i]``: [C_i]. ``variant``: 'genie', 'zeroq', 'gdfq',
    'hast' or a :class:`BNLossSpec`. Differentiable with respect to the activations.
    """
    spec = resolve_bn_loss_spec(variant)
    if not (len(activations) == len(running_means) == len(running_vars)) or not activations:
        raise ValueError(f"activations, running_means and running_vars must be non-empty lists of one length, "
                         f"got {len(activations)}, {len(running_means)}, {len(running_vars)}")
    for i, (a, m, v) in enumerate(zip(activations, running_means, running_vars)):
        checks.check_float_tensor(f"activations[{i}]", a)
        if a.dim() not in (2, 4):
            raise ValueError(f"activations[{i}] must be [N, C, H, W] or [N, C], got shape {tuple(a.shape)}")
        for name, t in ((f"running_means[{i}]", m), (f"running_vars[{i}]", v)):
            checks.check_tensor(name, t, checks.PARAM_DTYPES)
            if t.shape != (a.shape[1],):
                raise ValueError(f"{name} must have shape [{a.shape[1]}] (channels of activations[{i}]), "
                                 f"got {tuple(t.shape)}")
            checks.check_same_device(f"activations[{i}]", a, name, t)
        spatial = a.shape[2] * a.shape[3] if a.dim() == 4 else 1
        count = spatial if spec.per_image else spatial * a.shape[0]
        if spec.unbiased and count < 2:
            raise ValueError(f"activations[{i}] has {count} value(s) per statistic; the unbiased variance of "
                             f"variant {variant!r} needs at least 2")
    loss, _saved = _bn_stat_loss_op(list(activations), list(running_means), list(running_vars), *_spec_scalars(spec))
    return loss


# ---------------------------------------------------------------- torch.library custom op
#
# ``zsq::bn_stat_loss`` returns (loss, saved): ``saved`` is the fp32 [3, G] table of per-group
# (mean, A, B) that every backend's backward consumes (layout in reference/bn_stats.py). The
# variant travels as plain scalars so the schema has no Python objects.

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


@torch.library.custom_op("zsq::bn_stat_loss", mutates_args=())
def _bn_stat_loss_op(activations: List[Tensor], running_means: List[Tensor], running_vars: List[Tensor],
                     per_image: bool, use_std: bool, unbiased: bool, std_eps: float, eps_in_std: bool,
                     normalize: int, layer_mean: bool) -> Tuple[Tensor, Tensor]:
    spec = _spec_from_scalars(per_image, use_std, unbiased, std_eps, eps_in_std, normalize, layer_mean)
    fn = dispatch("bn_stats_forward", activations[0].device)
    loss, saved = fn([a.detach().contiguous() for a in activations], [m.detach() for m in running_means],
                     [v.detach() for v in running_vars], spec)
    return loss.float().reshape(()), saved.float().contiguous()


@_bn_stat_loss_op.register_fake
def _(activations, running_means, running_vars, per_image, use_std, unbiased, std_eps, eps_in_std, normalize,
      layer_mean):
    a0 = activations[0]
    return (a0.new_empty((), dtype=torch.float32),
            a0.new_empty((3, _num_groups(activations, per_image)), dtype=torch.float32))


@torch.library.custom_op("zsq::bn_stat_loss_backward", mutates_args=())
def _bn_stat_loss_backward_op(grad_out: Tensor, activations: List[Tensor], saved: Tensor, per_image: bool,
                              use_std: bool, unbiased: bool, std_eps: float, eps_in_std: bool, normalize: int,
                              layer_mean: bool) -> List[Tensor]:
    spec = _spec_from_scalars(per_image, use_std, unbiased, std_eps, eps_in_std, normalize, layer_mean)
    fn = dispatch("bn_stats_backward", activations[0].device)
    grads = fn(grad_out.detach().float().reshape(()), [a.detach().contiguous() for a in activations],
               saved.detach().contiguous(), spec)
    return [g.to(a.dtype).reshape(a.shape) for g, a in zip(grads, activations)]


@_bn_stat_loss_backward_op.register_fake
def _(grad_out, activations, saved, per_image, use_std, unbiased, std_eps, eps_in_std, normalize, layer_mean):
    return [torch.empty_like(a, memory_format=torch.contiguous_format) for a in activations]


def _bn_setup(ctx, inputs, output):
    activations = inputs[0]
    ctx.num_layers = len(activations)
    ctx.scalars = tuple(inputs[3:])
    ctx.save_for_backward(*activations, output[1])
    ctx.mark_non_differentiable(output[1])


def _bn_backward(ctx, grad_loss, _grad_saved):
    *activations, saved = ctx.saved_tensors
    grads = _bn_stat_loss_backward_op(grad_loss, activations, saved, *ctx.scalars)
    none_list = [None] * ctx.num_layers
    return (list(grads), none_list, list(none_list)) + (None,) * 7


_bn_stat_loss_op.register_autograd(_bn_backward, setup_context=_bn_setup)

bn_stat_loss_op = _bn_stat_loss_op
