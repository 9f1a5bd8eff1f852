"""The QDrop mix on every backend: opcheck, the mix and its gradients against their definition,
and torch.compile without graph breaks."""
import pytest
import torch

from zsq_engine import ops
from zsq_engine.ops.qdrop_mix import library as L
from zsq_engine.ops.reference.rng import uniform

from ._backend import BACKENDS, backend_fixture, compile_matches_eager

backend = pytest.fixture(params=BACKENDS)(backend_fixture)


def _pair(device):
    gen = torch.Generator().manual_seed(2)
    return torch.randn(3, 50, generator=gen).to(device), torch.randn(3, 50, generator=gen).to(device)


def test_opcheck(backend):
    _, device = backend
    x_q, x_fp = _pair(device)
    torch.library.opcheck(L.QDROP_MIX, (x_q.requires_grad_(), x_fp.requires_grad_(), 0.4, 11, 3))


def test_mix_and_gradients_follow_the_uniforms(backend):
    _, device = backend
    x_q, x_fp = _pair(device)
    keep = (uniform(11, x_q.numel(), 3, device=device) < 0.4).reshape(x_q.shape)
    assert 0 < int(keep.sum()) < keep.numel()
    a, b = x_q.clone().requires_grad_(), x_fp.clone().requires_grad_()
    out = ops.qdrop_mix(a, b, 0.4, 11, offset=3)
    assert torch.equal(out, torch.where(keep, x_q, x_fp))
    dy = torch.randn_like(out)
    da, db = torch.autograd.grad(out, (a, b), dy)
    assert torch.equal(da, torch.where(keep, dy, torch.zeros_like(dy)))
    assert torch.equal(db, torch.where(keep, torch.zeros_like(dy), dy))


def test_compile_fullgraph_matches_eager(backend):
    _, device = backend
    x_q, x_fp = _pair(device)
    compile_matches_eager(lambda a, b: ops.qdrop_mix(a * 2, b, 0.4, 11, offset=3),
                          [x_q.requires_grad_(), x_fp.requires_grad_()])
