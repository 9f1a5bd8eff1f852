"""The fake-quant family as torch.library ops, on every backend (reference / cpu / triton through
the interpreter / cuda when a GPU is visible): opcheck of every primitive and differentiable op,
results against PyTorch's own fake-quant ops, and torch.compile without graph breaks."""
import pytest
import torch

from zsq_engine import ops
from zsq_engine.ops.fake_quant import library as L

from ._backend import BACKENDS, backend_fixture

backend = pytest.fixture(params=BACKENDS)(backend_fixture)


def _inputs(device, c=3):
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(2, c, 4, 5, generator=gen) * 2).to(device)
    dy = torch.randn(2, c, 4, 5, generator=gen).to(device)
    scale = (torch.rand(c, generator=gen) * 0.2 + 0.1).to(device)
    zp = torch.randint(0, 8, (c,), generator=gen).float().to(device)
    return x, dy, scale, zp


def _primitive_cases(device):
    x, dy, s, z = _inputs(device)
    s1, z1 = s[:1].contiguous(), z[:1].contiguous()
    return {
        "fq_forward": (L.FQ_FORWARD, (x, s, z, -8, 7, 1)),
        "fq_forward_per_tensor": (L.FQ_FORWARD, (x, s1, z1, 0, 15, None)),
        "fq_backward": (L.FQ_BACKWARD, (dy, x, s, z, -8, 7, 1)),
        "lsq_backward": (L.LSQ_BACKWARD, (dy, x, s, z, 0, 15, 1, 0.5)),
        "qdrop_fq_forward": (L.QDROP_FQ_FORWARD, (x, s, z, -8, 7, 1, 0.5, 3, 2)),
        "qdrop_fq_backward": (L.QDROP_FQ_BACKWARD, (dy, x, s1, z1, 0, 15, None, 0.5, 3, 0)),
        "qdrop_lsq_backward": (L.QDROP_LSQ_BACKWARD, (dy, x, s, z, 0, 15, 1, 0.3, 0.7, 9, 5)),
    }


PRIMITIVE_CASES = list(_primitive_cases("cpu"))


def test_every_primitive_has_a_case():
    assert {op.name() for op in L.PRIMITIVES} == {op.name() for op, _ in _primitive_cases("cpu").values()}


@pytest.mark.parametrize("case", PRIMITIVE_CASES)
def test_primitive_opcheck(backend, case):
    _, device = backend
    op, args = _primitive_cases(device)[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("axis", [None, 1])
def test_fq_forward_and_backward_equal_pytorch(backend, axis):
    """The op (its per-device kernel: the forced backend) against torch's native fake-quant."""
    _, device = backend
    x, dy, s, z = _inputs(device)
    if axis is None:
        s, z = s[:1].contiguous(), z[:1].contiguous()
        want = torch.fake_quantize_per_tensor_affine(x, float(s), int(z), -8, 7)
    else:
        want = torch.fake_quantize_per_channel_affine(x, s, z.int(), axis, -8, 7)
    assert torch.equal(L.FQ_FORWARD(x, s, z, -8, 7, axis), want)
    xg = x.clone().requires_grad_()
    if axis is None:
        ref = torch.fake_quantize_per_tensor_affine(xg, float(s), int(z), -8, 7)
    else:
        ref = torch.fake_quantize_per_channel_affine(xg, s, z.int(), axis, -8, 7)
    (want_dx,) = torch.autograd.grad(ref, xg, dy)
    assert torch.equal(L.FQ_BACKWARD(dy, x, s, z, -8, 7, axis), want_dx)


def test_lsq_backward_equals_pytorch_learnable_fake_quant(backend):
    _, device = backend
    x, dy, s, z = _inputs(device)
    xg, sg, zg = x.clone().requires_grad_(), s.clone().requires_grad_(), z.clone().requires_grad_()
    ref = torch._fake_quantize_learnable_per_channel_affine(xg, sg, zg, 1, 0, 15, 0.5)
    want = torch.autograd.grad(ref, (xg, sg, zg), dy)
    got = L.LSQ_BACKWARD(dy, x, s, z, 0, 15, 1, 0.5)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-5)


def test_qdrop_primitives_mix_quantized_and_float_elements(backend):
    """qdrop_fq_forward is fq_forward where the kept mask is set and x elsewhere; with p = 0 it
    is x, with p = 1 it is fq_forward (the mask's uniforms are in [0, 1))."""
    _, device = backend
    x, dy, s, z = _inputs(device)
    fq = L.FQ_FORWARD(x, s, z, -8, 7, 1)
    assert torch.equal(L.QDROP_FQ_FORWARD(x, s, z, -8, 7, 1, 0.0, 4, 0), x)
    assert torch.equal(L.QDROP_FQ_FORWARD(x, s, z, -8, 7, 1, 1.0, 4, 0), fq)
    mixed = L.QDROP_FQ_FORWARD(x, s, z, -8, 7, 1, 0.5, 4, 0)
    from_q, from_x = mixed == fq, mixed == x
    assert bool((from_q | from_x).all()) and 0 < int((from_q & ~from_x).sum()) < x.numel()
    assert torch.equal(L.QDROP_FQ_BACKWARD(dy, x, s, z, -8, 7, 1, 0.0, 4, 0), dy)


def _public_calls(device):
    x, _, s, z = _inputs(device)
    return {
        "fake_quant": lambda x, s, z: ops.fake_quant(x, s, z, -8, 7, axis=1),
        "lsq_fake_quant": lambda x, s, z: ops.lsq_fake_quant(x, s, z, 0, 15, axis=1, grad_factor=0.5),
        "qdrop_fake_quant": lambda x, s, z: ops.qdrop_fake_quant(x, s, z, 0, 15, axis=1, p=0.5, seed=3,
                                                                 learnable=True, grad_factor=0.5),
    }, (x, s, z)


@pytest.mark.parametrize("name", ["fake_quant", "lsq_fake_quant", "qdrop_fake_quant"])
def test_differentiable_op_opcheck(backend, name):
    _, device = backend
    x, _, s, z = _inputs(device)
    xg, sg, zg = x.clone().requires_grad_(), s.clone().requires_grad_(), z.clone().requires_grad_()
    args = {"fake_quant": (xg, sg, zg, -8, 7, 1),
            "lsq_fake_quant": (xg, sg, zg, 0, 15, 1, 0.5),
            "qdrop_fake_quant": (xg, sg, zg, 0, 15, 1, 0.5, 3, 0, True, 0.5)}[name]
    torch.library.opcheck(getattr(torch.ops.zsq, name).default, args)


@pytest.mark.parametrize("name", ["fake_quant", "lsq_fake_quant", "qdrop_fake_quant"])
def test_compile_fullgraph_matches_eager(backend, name):
    """torch.compile traces the public function with no graph break (fullgraph=True) and its
    forward and gradients equal the eager path's."""
    _, device = backend
    calls, (x, s, z) = _public_calls(device)
    fn = calls[name]
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, s, z: fn(x, s, z) * 1.5, fullgraph=True, backend="aot_eager")
    results = []
    for f in (lambda x, s, z: fn(x, s, z) * 1.5, compiled):
        xg, sg, zg = x.clone().requires_grad_(), s.clone().requires_grad_(), z.clone().requires_grad_()
        out = f(xg, sg, zg)
        grads = torch.autograd.grad(out.sum(), (xg, sg, zg), allow_unused=True)
        results.append((out.detach(), grads))
    (out_e, g_e), (out_c, g_c) = results
    assert torch.equal(out_e, out_c)
    assert g_e[0] is not None and (g_e[1] is None) == (name == "fake_quant")
    for a, b in zip(g_e, g_c):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
