"""The scale-search op on every backend: opcheck, the search against a brute-force float64
search written out here, and torch.compile without graph breaks."""
import pytest
import torch

from zsq_engine import ops
from zsq_engine.ops.scale_search import library as L

from ._backend import BACKENDS, backend_fixture

backend = pytest.fixture(params=BACKENDS)(backend_fixture)


def _x(device):
    gen = torch.Generator().manual_seed(4)
    return torch.randn(3, 200, generator=gen).to(device)


@pytest.mark.parametrize("axis", [0, None])
def test_opcheck(backend, axis):
    _, device = backend
    torch.library.opcheck(L.SCALE_SEARCH, (_x(device), 0, 15, axis, 20, 2.4, False))


def _brute_force(x2d, qmin, qmax, n, p):
    best = []
    for row in x2d.double():
        errs = []
        for i in range(n):
            lo, hi = min(float(row.min()) * (1 - 0.01 * i), 0.0), max(float(row.max()) * (1 - 0.01 * i), 0.0)
            s = max((hi - lo) / (qmax - qmin), 1e-8)
            z = qmin - round(lo / s)
            q = torch.clamp(torch.round(row / s) + z, qmin, qmax)
            errs.append(float(((row - (q - z) * s).abs() ** p).mean()))
        best.append(min(range(n), key=lambda i: errs[i]))
    return best


def test_search_picks_the_brute_force_candidate(backend):
    """The chosen scale is the one of the best clipping ratio found by trying every ratio in
    float64; compared by ratio (the kernels round in fp32, so near-ties may differ by one)."""
    _, device = backend
    x = _x(device)
    scale, zp = ops.scale_search(x, 0, 15, axis=0, num_candidates=30, p=2.4)
    assert scale.shape == zp.shape == (3,) and scale.dtype == zp.dtype == torch.float32
    best = _brute_force(x.cpu(), 0, 15, 30, 2.4)
    full = (x.amax(1).clamp(min=0) - x.amin(1).clamp(max=0)).cpu() / 15
    ratios = (scale.cpu() / full).tolist()
    for r, i in zip(ratios, best):
        assert abs(r - (1 - 0.01 * i)) <= 0.0101, (ratios, best)
    assert any(i > 0 for i in best)  # the data makes some clipping pay, so ratio 1 alone fails


def test_compile_fullgraph(backend):
    _, device = backend
    x = _x(device)
    eager = ops.scale_search(x, 0, 15, axis=0, num_candidates=20)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: ops.scale_search(x, 0, 15, axis=0, num_candidates=20), fullgraph=True,
                             backend="aot_eager")(x)
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])
