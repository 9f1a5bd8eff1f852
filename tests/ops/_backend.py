"""The backend parameter of the op-family tests: every backend that can run here, forced."""
import pytest
import torch

from zsq_engine import ops
from zsq_engine.ops import dispatch

BACKENDS = ["reference", "cpu", "triton", "cuda"]


def backend_fixture(request):
    name = request.param
    ok, why = dispatch.backend_status(name)
    if not ok:
        pytest.skip(f"{name}: {why}")
    device = torch.device("cuda" if name == "cuda" or (name == "triton" and torch.cuda.is_available()) else "cpu")
    with ops.use_backend(name, strict=True):
        yield name, device


def compile_matches_eager(fn, inputs):
    """``fn`` compiled with fullgraph=True (no graph break allowed) gives eager's output and
    gradients, bit for bit; returns the eager gradients."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    results = []
    for f in (fn, compiled):
        leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
        out = f(*leaves)
        wanted = [t for t in leaves if t.requires_grad]
        grads = torch.autograd.grad(out.sum(), wanted, allow_unused=True) if wanted else ()
        results.append((out.detach(), grads))
    (out_e, g_e), (out_c, g_c) = results
    assert torch.equal(out_e, out_c)
    for a, b in zip(g_e, g_c):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
    return g_e
