"""ops.self_attention (softmax(u u^T) u, ZAQ's spatial relation) on every backend against the
attention matrix materialised in float64 and differentiated by autograd; the relation loss's
'fused' path against its 'chunked' one."""
import pytest
import torch

from zsq_engine import ops
from zsq_engine.ops import dispatch
from zsq_engine.qat.losses import spatial_relation

BACKENDS = [b for b in ("reference", "cpu")
            if ops.backend_status(b)[0] and b in dispatch.implementations("self_attention_forward")]


def materialised(u):
    """The L x L matrix in full, float64, one image at a time."""
    return torch.stack([torch.softmax(x @ x.t(), dim=-1) @ x for x in u.double()])


SHAPES = [(1, 1, 1), (2, 7, 3), (3, 49, 64), (2, 100, 17), (2, 784, 16), (1, 33, 5)]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spread", [1.0, 6.0])
def test_values_and_gradient_match_the_materialised_attention(backend, shape, spread):
    g = torch.Generator().manual_seed(sum(shape))
    u = (torch.randn(shape, generator=g) * spread / shape[-1] ** 0.5).requires_grad_()
    grad_out = torch.randn(shape, generator=g)
    with ops.use_backend(backend, strict=True):
        out = ops.self_attention(u)
        (got_grad,) = torch.autograd.grad(out, u, grad_out)
    u64 = u.detach().double().requires_grad_()
    want = materialised(u64)
    (want_grad,) = torch.autograd.grad(want, u64, grad_out.double())
    assert out.dtype == torch.float32 and out.shape == shape
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-4, atol=1e-4 * spread)


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_kernel_is_independent_of_the_thread_count(threads):
    if "cpu" not in BACKENDS:
        pytest.skip("C++ extension without the self-attention kernel")
    u = torch.randn(5, 50, 8).requires_grad_()
    grad_out = torch.randn(5, 50, 8)
    old = torch.get_num_threads()
    results = []
    try:
        for t in (1, threads):
            torch.set_num_threads(t)
            with ops.use_backend("cpu", strict=True):
                out = ops.self_attention(u)
                results.append((out, torch.autograd.grad(out, u, grad_out)[0]))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_other_dtypes_run_the_reference_on_every_backend(dtype):
    u = torch.randn(2, 20, 6, dtype=dtype)
    with ops.use_backend("reference", strict=True):
        want = ops.self_attention(u)
    for backend in BACKENDS:
        with ops.use_backend(backend, strict=True):
            got = ops.self_attention(u)
        assert got.dtype == dtype
        torch.testing.assert_close(got, want)


def test_non_contiguous_input_and_empty_batch():
    u = torch.randn(12, 3, 4).transpose(0, 1)            # [3, 12, 4], not contiguous
    torch.testing.assert_close(ops.self_attention(u).double(), materialised(u), rtol=1e-5, atol=1e-5)
    assert ops.self_attention(torch.randn(0, 5, 3)).shape == (0, 5, 3)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="u must be"):
        ops.self_attention(torch.randn(4, 5))
    for dtype in (torch.int32, torch.float64):
        with pytest.raises(TypeError, match="u must have dtype"):
            ops.self_attention(torch.ones(2, 3, 4, dtype=dtype))


@pytest.mark.parametrize("shape", [(3, 16, 28, 28), (2, 32, 7, 7), (2, 5, 3, 4)])
def test_relation_fused_matches_chunked(shape):
    f = torch.randn(shape)
    a = f.clone().requires_grad_()
    b = f.clone().requires_grad_()
    ra, rb = spatial_relation(a, "fused"), spatial_relation(b, "chunked", chunk_rows=64)
    g = torch.randn_like(ra)
    (ra * g).sum().backward()
    (rb * g).sum().backward()
    torch.testing.assert_close(ra, rb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
