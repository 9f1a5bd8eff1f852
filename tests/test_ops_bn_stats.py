"""bn_stat_loss variants against the formulas of ZeroQ, Genie and GDFQ/HAST written out directly."""
import pytest
import torch

from zsq_engine import ops


def _layers(device, dtype=torch.float32):
    shapes = [(4, 3, 5, 5), (4, 7, 3, 3), (4, 5)]  # odd channel counts and a BatchNorm1d input
    acts = [(torch.randn(s) * 2 + 0.5).to(dtype).to(device) for s in shapes]
    means = [torch.randn(s[1], device=device) for s in shapes]
    vars_ = [torch.rand(s[1], device=device) + 0.1 for s in shapes]
    return acts, means, vars_


def _genie(acts, means, vars_):
    total = 0.0
    for a, m, v in zip(acts, means, vars_):
        a = a.float()
        dims = [0, 2, 3] if a.dim() == 4 else [0]
        std, mean = torch.std_mean(a, dim=dims)
        c = a.shape[1]
        total = total + torch.norm(mean - m) ** 2 / c + torch.norm(std - torch.sqrt(v + 1e-6)) ** 2 / c
    return total


def _zeroq(acts, means, vars_):
    total = 0.0
    for a, m, v in zip(acts, means, vars_):
        a = a.float()
        flat = a.reshape(a.shape[0], a.shape[1], -1)
        mean = flat.mean(2)
        std = torch.sqrt(flat.var(2) + 1e-6)
        total = total + (torch.norm(m - mean) ** 2 + torch.norm(torch.sqrt(v + 1e-6) - std) ** 2) / a.shape[0]
    return total


def _gdfq(acts, means, vars_):
    total = 0.0
    for a, m, v in zip(acts, means, vars_):
        a = a.float()
        flat = a.transpose(0, 1).reshape(a.shape[1], -1)
        total = total + torch.nn.functional.mse_loss(flat.mean(1), m) + \
            torch.nn.functional.mse_loss(flat.var(1, unbiased=False), v)
    return total / len(acts)


@pytest.mark.parametrize("variant,ref", [("genie", _genie), ("gdfq", _gdfq), ("hast", _gdfq)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_bn_stat_loss_batch_variants(variant, ref, dtype, device):
    acts, means, vars_ = _layers(device, dtype)
    acts = [a.requires_grad_() for a in acts]
    loss = ops.bn_stat_loss(acts, means, vars_, variant)
    torch.testing.assert_close(loss, ref(acts, means, vars_).float(), rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(loss, acts)
    ref_grads = torch.autograd.grad(ref(acts, means, vars_), acts)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.float(), r.float(), rtol=1e-3, atol=1e-5)


def test_bn_stat_loss_zeroq_per_image(device):
    acts, means, vars_ = _layers(device)
    acts = acts[:2]  # per-image statistics need spatial extent
    torch.testing.assert_close(ops.bn_stat_loss(acts, means[:2], vars_[:2], "zeroq"),
                               _zeroq(acts, means[:2], vars_[:2]))


def test_bn_stat_loss_is_zero_at_matching_statistics(device):
    a = torch.randn(8, 4, 6, 6, device=device)
    var, mean = torch.var_mean(a, dim=(0, 2, 3), correction=0)
    assert float(ops.bn_stat_loss([a], [mean], [var], "gdfq")) < 1e-10


def test_bn_stat_loss_bad_arguments():
    a = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="variant must be one of"):
        ops.bn_stat_loss([a], [torch.zeros(3)], [torch.ones(3)], "nope")
    with pytest.raises(ValueError, match=r"running_means\[0\] must have shape \[3\]"):
        ops.bn_stat_loss([a], [torch.zeros(4)], [torch.ones(3)])
    with pytest.raises(ValueError, match="non-empty lists of one length"):
        ops.bn_stat_loss([a], [], [])
    with pytest.raises(ValueError, match="needs at least 2"):
        ops.bn_stat_loss([torch.randn(1, 3)], [torch.zeros(3)], [torch.ones(3)], "genie")
