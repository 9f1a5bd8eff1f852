"""The torch.library registration: opcheck, torch.compile without graph breaks, fused QDrop."""
import pytest
import torch

from zsq_engine import ops


def _qp(c, device, requires_grad=False):
    scale = (torch.rand(c, device=device) * 0.1 + 0.05).requires_grad_(requires_grad)
    zp = torch.randint(0, 16, (c,), device=device).float().requires_grad_(requires_grad)
    return scale, zp


def _cases(device):
    x = torch.randn(2, 3, 5, 4, device=device, requires_grad=True)
    s1, z1 = _qp(1, device, True)
    s3, z3 = _qp(3, device, True)
    w_floor = torch.randint(-4, 4, (3, 2, 3, 3), device=device).float()
    alpha = torch.randn(3, 2, 3, 3, device=device, requires_grad=True)
    return [
        (torch.ops.zsq.fake_quant.default, (x, s1, z1, 0, 15, None)),
        (torch.ops.zsq.fake_quant.default, (x, s3, z3, 0, 15, 1)),
        (torch.ops.zsq.lsq_fake_quant.default, (x, s1, z1, 0, 15, None, 0.5)),
        (torch.ops.zsq.lsq_fake_quant.default, (x, s3, z3, -8, 7, 1, 1.0)),
        (torch.ops.zsq.qdrop_fake_quant.default, (x, s1, z1, 0, 15, None, 0.5, 3, 0, True, 1.0)),
        (torch.ops.zsq.qdrop_fake_quant.default, (x, s1, z1, 0, 15, None, 0.5, 3, 0, False, 1.0)),
        (torch.ops.zsq.adaround_fake_quant.default, (w_floor, alpha, s3, z3.detach(), 0, 15, 0, False)),
        (torch.ops.zsq.adaround_regularizer.default, (alpha, 2.0)),
        (torch.ops.zsq.scale_search.default, (x.detach(), 0, 15, 1, 20, 2.4, False)),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(9))
def test_opcheck(index, device):
    op, args = _cases(device)[index]
    torch.library.opcheck(op, args)


_EAGER_NAMES = ["fake_quant", "fake_quant", "lsq_fake_quant", "lsq_fake_quant", "qdrop_fake_quant",
                "qdrop_fake_quant", "adaround_fake_quant", "adaround_regularizer"]


@pytest.mark.parametrize("index", range(len(_EAGER_NAMES)))
def test_eager_path_equals_the_custom_op(index, device):
    """Eager calls skip the custom-op machinery (an autograd.Function over the same
    implementation); outputs and every input gradient must equal the custom op's, bit for bit."""
    from zsq_engine.ops.adaround import library as ada_library
    from zsq_engine.ops.fake_quant import library as fq_library
    op, args = _cases(device)[index]
    eager = getattr(fq_library if hasattr(fq_library, _EAGER_NAMES[index]) else ada_library, _EAGER_NAMES[index])
    assert eager is not op
    results = []
    for fn in (op, eager):
        torch.manual_seed(0)
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        for leaf in leaves:
            leaf.grad = None
        out = fn(*args)
        weight = torch.randn(out.shape, device=device)  # a non-uniform upstream gradient
        (out * weight).sum().backward()
        results.append((out.detach().clone(), [None if leaf.grad is None else leaf.grad.clone() for leaf in leaves]))
    (out_op, grads_op), (out_eager, grads_eager) = results
    assert torch.equal(out_op, out_eager)
    assert any(g is not None for g in grads_op)
    for a, b in zip(grads_op, grads_eager):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))


def test_qdrop_fake_quant_equals_composition(device):
    x = torch.randn(4, 3, 7, 5, device=device, requires_grad=True)
    scale = torch.tensor([0.07], device=device, requires_grad=True)
    zp = torch.tensor([6.0], device=device, requires_grad=True)
    dy = torch.randn_like(x)
    fused = ops.qdrop_fake_quant(x, scale, zp, 0, 15, p=0.5, seed=11, offset=4, learnable=True, grad_factor=0.3)
    g_fused = torch.autograd.grad(fused, (x, scale, zp), dy)
    composed = ops.qdrop_mix(ops.lsq_fake_quant(x, scale, zp, 0, 15, grad_factor=0.3), x, 0.5, seed=11, offset=4)
    g_comp = torch.autograd.grad(composed, (x, scale, zp), dy)
    assert torch.equal(fused, composed)
    assert torch.equal(g_fused[0], g_comp[0])
    torch.testing.assert_close(g_fused[1], g_comp[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_fused[2], g_comp[2], rtol=1e-5, atol=1e-5)


def test_regularizer_gradient_matches_autograd_of_formula(device):
    alpha = torch.randn(40, device=device, requires_grad=True) * 3
    alpha.retain_grad()
    for beta in (20.0, 7.5, 2.0):
        (g,) = torch.autograd.grad(ops.adaround_regularizer(alpha, beta) * 1.7, alpha)
        a = alpha.detach().clone().requires_grad_()
        h = torch.clamp(torch.sigmoid(a) * 1.2 - 0.1, 0, 1)
        (ref,) = torch.autograd.grad((1 - (2 * h - 1).abs() ** beta).sum() * 1.7, a)
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)


def test_frozen_qparams_take_the_straight_through_path(device):
    x = torch.randn(6, 5, device=device, requires_grad=True)
    scale, zp = _qp(1, device)
    (dx,) = torch.autograd.grad(ops.lsq_fake_quant(x, scale, zp, 0, 15).sum(), x)
    (dx_ste,) = torch.autograd.grad(ops.fake_quant(x, scale, torch.clamp(torch.round(zp), 0, 15), 0, 15).sum(), x)
    assert torch.equal(dx, dx_ste)


def test_compiles_without_graph_breaks():
    def step(x, scale, zp, alpha, w_floor):
        y = ops.lsq_fake_quant(x, scale, zp, 0, 15)
        w = ops.adaround_fake_quant(w_floor, alpha, scale, zp, 0, 15, axis=None)
        return (y.sum() + w.sum() + ops.adaround_regularizer(alpha, 2.0))

    x = torch.randn(8, 4)
    scale = torch.tensor([0.1], requires_grad=True)
    zp = torch.tensor([7.0], requires_grad=True)
    alpha = torch.randn(3, 3, requires_grad=True)
    w_floor = torch.randint(-3, 3, (3, 3)).float()
    explanation = torch._dynamo.explain(step)(x, scale, zp, alpha, w_floor)
    assert explanation.graph_break_count == 0, explanation.break_reasons

