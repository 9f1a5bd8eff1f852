"""pytest-benchmark suite for LSQ fake-quant fwd+bwd (CPU by default, CUDA when available).

    .venv/bin/python -m pytest benchmarks/test_bench_fake_quant.py --benchmark-only

Compare the groups: each case has the zsq op, PyTorch's native learnable op and eager LSQ.
For rows with bandwidth and ratios use ``python -m benchmarks.fake_quant``.
"""
import pytest
import torch

from benchmarks.fake_quant import IMPLS, QUICK_CASES

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("label,shape,axis", QUICK_CASES, ids=[c[0] for c in QUICK_CASES])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_lsq_fwd_bwd(benchmark, impl, label, shape, axis):
    benchmark.group = label
    channels = 1 if axis is None else shape[axis]
    x = torch.randn(shape, device=DEVICE).requires_grad_()
    dy = torch.randn(shape, device=DEVICE)
    scale = torch.full((channels,), 0.1, device=DEVICE, requires_grad=True)
    zp = torch.full((channels,), 7.0, device=DEVICE, requires_grad=True)
    fn = IMPLS[impl]

    def step():
        grads = torch.autograd.grad(fn(x, scale, zp, 0, 15, axis, 0.01), (x, scale, zp), dy)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return grads

    grads = benchmark(step)
    assert grads[0].shape == x.shape
