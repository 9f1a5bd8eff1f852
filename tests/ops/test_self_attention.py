"""The self-attention family on its backends (reference, cpu; no Triton / CUDA kernel: CUDA
callers use scaled_dot_product_attention): opcheck, float64 softmax attention, torch.compile."""
import pytest
import torch

from zsq_engine import ops
from zsq_engine.ops.self_attention import library as L

from ._backend import backend_fixture, compile_matches_eager

backend = pytest.fixture(params=["reference", "cpu"])(backend_fixture)


def _u(device):
    gen = torch.Generator().manual_seed(8)
    return torch.randn(2, 9, 4, generator=gen).to(device)


def test_opcheck(backend):
    _, device = backend
    u = _u(device)
    torch.library.opcheck(L.SELF_ATTENTION_FORWARD, (u,))
    out, lse = L.SELF_ATTENTION_FORWARD(u)
    torch.library.opcheck(L.SELF_ATTENTION_BACKWARD, (u, out, lse, torch.randn_like(out)))
    torch.library.opcheck(torch.ops.zsq.self_attention.default, (u.requires_grad_(),))


def test_against_float64_attention(backend):
    _, device = backend
    u = _u(device).requires_grad_()
    u64 = u.detach().double().requires_grad_()
    want = torch.softmax(u64 @ u64.transpose(1, 2), dim=-1) @ u64
    out = ops.self_attention(u)
    torch.testing.assert_close(out.double(), want.detach(), rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(out)
    (g,), (g64,) = torch.autograd.grad(out, u, dy), torch.autograd.grad(want, u64, dy.double())
    torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-5)


def test_compile_fullgraph_matches_eager(backend):
    _, device = backend
    compile_matches_eager(lambda u: ops.self_attention(u * 0.5), [_u(device).requires_grad_()])
