"""The BN-statistics loss family on every backend: opcheck of its primitives and its op, the
'genie' loss and gradient against float64 arithmetic written out here, torch.compile without
graph breaks."""
import pytest
import torch

from zsq_engine import ops
from zsq_engine.ops.bn_stats import library as L

from ._backend import BACKENDS, backend_fixture

backend = pytest.fixture(params=BACKENDS)(backend_fixture)

GENIE = L._spec_scalars(ops.BNLossSpec())  # per batch, unbiased std, eps 1e-6, / C, summed


def _layers(device):
    gen = torch.Generator().manual_seed(3)
    acts = [torch.randn(4, 3, 5, 5, generator=gen).to(device), (torch.randn(6, 2, generator=gen) * 2 + 1).to(device)]
    means = [torch.randn(3, generator=gen).to(device), torch.randn(2, generator=gen).to(device)]
    vars_ = [(torch.rand(3, generator=gen) + 0.5).to(device), (torch.rand(2, generator=gen) + 0.5).to(device)]
    return acts, means, vars_


def test_primitive_opcheck(backend):
    _, device = backend
    acts, means, vars_ = _layers(device)
    torch.library.opcheck(L.BN_STATS_FORWARD, (acts, means, vars_) + GENIE)
    _, saved = L.BN_STATS_FORWARD(acts, means, vars_, *GENIE)
    torch.library.opcheck(L.BN_STATS_BACKWARD, (torch.tensor(1.0, device=device), acts, saved) + GENIE)
    torch.library.opcheck(L.bn_stat_loss_op, ([a.requires_grad_() for a in acts], means, vars_) + GENIE)


def _genie64(acts, means, vars_):
    total = 0.0
    for a, m, v in zip(acts, means, vars_):
        x = a.double().transpose(0, 1).reshape(a.shape[1], -1)
        dmean = x.mean(1) - m.double()
        dstd = x.std(1, unbiased=True) - (v.double() + 1e-6).sqrt()
        total = total + ((dmean ** 2).sum() + (dstd ** 2).sum()) / a.shape[1]
    return total


def test_loss_and_gradient_against_float64(backend):
    _, device = backend
    acts, means, vars_ = _layers(device)
    loss, saved = L.BN_STATS_FORWARD(acts, means, vars_, *GENIE)
    a64 = [a.double().requires_grad_() for a in acts]
    want = _genie64(a64, means, vars_)
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-6)
    grads = L.BN_STATS_BACKWARD(torch.tensor(0.5, device=device), acts, saved, *GENIE)
    want_grads = torch.autograd.grad(want * 0.5, a64)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-6)


def test_compile_fullgraph_matches_eager(backend):
    _, device = backend
    acts, means, vars_ = _layers(device)

    def loss(a0, a1):
        return ops.bn_stat_loss([a0 * 1.0, a1], means, vars_, "genie") * 2.0

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    results = []
    for f in (loss, compiled):
        leaves = [a.clone().requires_grad_() for a in acts]
        out = f(*leaves)
        results.append((out.detach(), torch.autograd.grad(out, leaves)))
    (out_e, g_e), (out_c, g_c) = results
    assert torch.equal(out_e, out_c)
    for a, b in zip(g_e, g_c):
        assert torch.equal(a, b)
