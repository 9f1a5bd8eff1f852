"""The AdaRound family as torch.library ops on every backend: opcheck of every primitive and
differentiable op, the primitives against the AdaRound formulas written out here, and
torch.compile without graph breaks."""
import pytest
import torch

from zsq_engine import ops
from zsq_engine.ops.adaround import library as L

from ._backend import BACKENDS, backend_fixture, compile_matches_eager

backend = pytest.fixture(params=BACKENDS)(backend_fixture)


def _inputs(device):
    gen = torch.Generator().manual_seed(9)
    w_floor = torch.randint(-6, 6, (4, 3, 3), generator=gen).float().to(device)
    alpha = (torch.randn(4, 3, 3, generator=gen) * 2).to(device)
    dy = torch.randn(4, 3, 3, generator=gen).to(device)
    scale = (torch.rand(4, generator=gen) * 0.1 + 0.05).to(device)
    zp = torch.randint(0, 8, (4,), generator=gen).float().to(device)
    return w_floor, alpha, dy, scale, zp


def _primitive_cases(device):
    w_floor, alpha, dy, s, z = _inputs(device)
    return {
        "adaround_forward_soft": (L.ADAROUND_FORWARD, (w_floor, alpha, s, z, 0, 7, 0, False)),
        "adaround_forward_hard": (L.ADAROUND_FORWARD, (w_floor, alpha, s, z, 0, 7, 0, True)),
        "adaround_backward": (L.ADAROUND_BACKWARD, (dy, w_floor, alpha, s, z, 0, 7, 0)),
        "adaround_reg_forward": (L.ADAROUND_REG_FORWARD, (alpha, 3.0)),
        "adaround_reg_backward": (L.ADAROUND_REG_BACKWARD, (torch.tensor(1.5, device=device), alpha, 3.0)),
    }


def test_every_primitive_has_a_case():
    assert {op.name() for op in L.PRIMITIVES} == {op.name() for op, _ in _primitive_cases("cpu").values()}


@pytest.mark.parametrize("case", list(_primitive_cases("cpu")))
def test_primitive_opcheck(backend, case):
    _, device = backend
    op, args = _primitive_cases(device)[case]
    torch.library.opcheck(op, args)


def _soft_weights64(w_floor, alpha, scale, zp, qmin, qmax):
    # the AdaRound definition in float64, channel axis 0
    h = torch.clamp(torch.sigmoid(alpha.double()) * 1.2 - 0.1, 0, 1)
    zp_b, s_b = zp.double().reshape(-1, 1, 1), scale.double().reshape(-1, 1, 1)
    return (torch.clamp(w_floor.double() + h + zp_b, qmin, qmax) - zp_b) * s_b


def test_primitives_against_the_formula(backend):
    _, device = backend
    w_floor, alpha, dy, s, z = _inputs(device)
    soft = L.ADAROUND_FORWARD(w_floor, alpha, s, z, 0, 7, 0, False)
    torch.testing.assert_close(soft.double(), _soft_weights64(w_floor, alpha, s, z, 0, 7), rtol=1e-6, atol=1e-6)
    hard = L.ADAROUND_FORWARD(w_floor, alpha, s, z, 0, 7, 0, True)
    zp_b, s_b = z.reshape(-1, 1, 1), s.reshape(-1, 1, 1)
    want_hard = (torch.clamp(w_floor + (alpha >= 0).float() + zp_b, 0, 7) - zp_b) * s_b
    torch.testing.assert_close(hard, want_hard, rtol=1e-6, atol=1e-7)
    # gradients: autograd through the float64 formula
    a64, s64 = alpha.double().requires_grad_(), s.double().requires_grad_()
    ref = _soft_weights64(w_floor, a64, s64, z, 0, 7)
    want_da, want_ds = torch.autograd.grad(ref, (a64, s64), dy.double())
    dalpha, dscale = L.ADAROUND_BACKWARD(dy, w_floor, alpha, s, z, 0, 7, 0)
    torch.testing.assert_close(dalpha.double(), want_da, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dscale.double(), want_ds, rtol=1e-5, atol=1e-5)
    h = torch.clamp(torch.sigmoid(a64) * 1.2 - 0.1, 0, 1)
    reg64 = (1 - (2 * h - 1).abs().pow(3.0)).sum()
    (want_dreg,) = torch.autograd.grad(reg64, a64)
    torch.testing.assert_close(L.ADAROUND_REG_FORWARD(alpha, 3.0).double(), reg64.detach(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(L.ADAROUND_REG_BACKWARD(torch.tensor(2.0, device=device), alpha, 3.0).double(),
                               2 * want_dreg, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hard", [False, True])
def test_differentiable_op_opcheck(backend, hard):
    _, device = backend
    w_floor, alpha, _, s, z = _inputs(device)
    torch.library.opcheck(torch.ops.zsq.adaround_fake_quant.default,
                          (w_floor, alpha.requires_grad_(), s.requires_grad_(), z, 0, 7, 0, hard))
    torch.library.opcheck(torch.ops.zsq.adaround_regularizer.default, (alpha, 2.5))


def test_compile_fullgraph_matches_eager(backend):
    _, device = backend
    w_floor, alpha, _, s, z = _inputs(device)

    def loss(alpha, s):
        w = ops.adaround_fake_quant(w_floor, alpha, s, z, 0, 7, axis=0)
        return (w * w).sum() + 0.1 * ops.adaround_regularizer(alpha, 4.0)

    grads = compile_matches_eager(loss, [alpha.requires_grad_(), s.requires_grad_()])
    assert all(g is not None for g in grads)
