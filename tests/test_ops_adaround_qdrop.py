"""AdaRound, QDrop mixing and the shared counter-based RNG against independent formulas."""
import pytest
import torch

from zsq_engine import ops
from zsq_engine.ops.reference import rng


def _brecq_soft_weights(w_floor, alpha, scale, zp, qmin, qmax):
    # written from the AdaRound definition (BRECQ's AdaRoundQuantizer), channel axis 0
    h = torch.clamp(torch.sigmoid(alpha) * 1.2 - 0.1, 0, 1)
    view = (-1,) + (1,) * (w_floor.dim() - 1)
    zp_b, s_b = zp.reshape(view), scale.reshape(view)
    return (torch.clamp(w_floor + h + zp_b, qmin, qmax) - zp_b) * s_b


@pytest.mark.parametrize("shape", [(1, 1), (7, 3, 3, 3), (16, 5)])
def test_adaround_soft_and_hard_forward(shape, device):
    qmin, qmax = 0, 15
    w = torch.randn(shape, device=device)
    scale = torch.rand(shape[0], device=device) * 0.1 + 0.05
    zp = torch.randint(0, 16, (shape[0],), device=device).float()
    w_floor, alpha = ops.adaround_init(w, scale)
    alpha = alpha + torch.randn_like(alpha)  # move away from the init so h is not just the fraction
    soft = ops.adaround_fake_quant(w_floor, alpha, scale, zp, qmin, qmax)
    torch.testing.assert_close(soft, _brecq_soft_weights(w_floor, alpha, scale, zp, qmin, qmax))
    hard = ops.adaround_fake_quant(w_floor, alpha, scale, zp, qmin, qmax, hard=True)
    view = (-1,) + (1,) * (len(shape) - 1)
    q = hard / scale.reshape(view) + zp.reshape(view)
    # hard weights lie exactly on the integer grid inside the range
    torch.testing.assert_close(q, torch.round(q), atol=1e-4, rtol=0)
    assert q.min() >= qmin - 1e-4 and q.max() <= qmax + 1e-4
    expected_q = torch.clamp(w_floor + (alpha >= 0).float() + zp.reshape(view), qmin, qmax)
    torch.testing.assert_close(q, expected_q, atol=1e-4, rtol=0)


def test_adaround_init_reproduces_weights(device):
    w = torch.randn(8, 4, 3, 3, device=device)
    scale = torch.rand(8, device=device) * 0.1 + 0.05
    zp = torch.full((8,), 8.0, device=device)
    w_floor, alpha = ops.adaround_init(w, scale)
    h = ops.adaround_h(alpha)
    view = (-1, 1, 1, 1)
    torch.testing.assert_close(h, w / scale.reshape(view) - w_floor, atol=1e-5, rtol=0)
    # inside the range the soft weights at init are the original weights
    soft = ops.adaround_fake_quant(w_floor, alpha, scale, zp, -1000, 1000)
    torch.testing.assert_close(soft, w, atol=1e-5, rtol=1e-5)


def test_adaround_gradients_to_alpha_and_scale(device):
    qmin, qmax = 0, 7
    w_floor = torch.randint(-6, 6, (6, 4), device=device).float()
    alpha = torch.randn(6, 4, device=device, requires_grad=True)
    scale = (torch.rand(6, device=device) * 0.1 + 0.05).requires_grad_()
    zp = torch.full((6,), 3.0, device=device)
    out = ops.adaround_fake_quant(w_floor, alpha, scale, zp, qmin, qmax)
    dy = torch.randn_like(out)
    da, ds = torch.autograd.grad(out, (alpha, scale), dy)
    # analytic: dW/dalpha = s * 1.2 * sig * (1 - sig) where h and the clamp are unsaturated
    sig = torch.sigmoid(alpha.detach())
    h_lin = sig * 1.2 - 0.1
    v = w_floor + h_lin.clamp(0, 1) + zp[:, None]
    live = (h_lin > 0) & (h_lin < 1) & (v >= qmin) & (v <= qmax)
    expected_da = dy * scale.detach()[:, None] * 1.2 * sig * (1 - sig) * live
    torch.testing.assert_close(da, expected_da)
    expected_ds = (dy * (v.clamp(qmin, qmax) - zp[:, None])).sum(1)
    torch.testing.assert_close(ds, expected_ds)


def test_adaround_regularizer(device):
    alpha = torch.randn(5, 7, device=device, requires_grad=True)
    for beta in (20.0, 2.0):
        reg = ops.adaround_regularizer(alpha, beta)
        h = torch.clamp(torch.sigmoid(alpha) * 1.2 - 0.1, 0, 1)
        expected = (1 - (2 * h - 1).abs() ** beta).sum()
        torch.testing.assert_close(reg, expected)
    (g,) = torch.autograd.grad(ops.adaround_regularizer(alpha, 2.0), alpha)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # saturated logits (h exactly 0 or 1) cost nothing
    assert float(ops.adaround_regularizer(torch.tensor([-50.0, 50.0], device=device), 2.0)) == 0.0


def test_adaround_bad_arguments(device):
    w = torch.zeros(4, 3, device=device)
    with pytest.raises(ValueError, match="alpha must have the shape of w_floor"):
        ops.adaround_fake_quant(w, torch.zeros(4, 2, device=device), torch.ones(4, device=device),
                                torch.zeros(4, device=device), 0, 15)
    with pytest.raises(ValueError, match=r"scale must have shape \[4\]"):
        ops.adaround_fake_quant(w, w, torch.ones(3, device=device), torch.zeros(3, device=device), 0, 15)


def _mix32_python(v):
    v &= 0xFFFFFFFF
    v ^= v >> 16
    v = (v * 0x7FEB352D) & 0xFFFFFFFF
    v ^= v >> 15
    v = (v * 0x846CA68B) & 0xFFFFFFFF
    return v ^ (v >> 16)


def test_rng_matches_python_uint32_arithmetic():
    seed, offset, n = 1234567, 2 ** 32 - 5, 11   # wraps the 32-bit index
    u = rng.uniform(seed, n, offset)
    for i in range(n):
        idx = (offset + i) & 0xFFFFFFFF
        bits = _mix32_python(idx ^ _mix32_python(seed))
        assert float(u[i]) == (bits >> 8) / 2 ** 24


def test_qdrop_mix_probability_reproducibility_and_grads(device):
    shape = (64, 33, 17)
    x_q = torch.zeros(shape, device=device, requires_grad=True)
    x_fp = torch.ones(shape, device=device, requires_grad=True)
    for p in (0.0, 0.3, 0.5, 1.0):
        out = ops.qdrop_mix(x_q, x_fp, p, seed=7)
        frac_q = float((out == 0).float().mean())
        assert abs(frac_q - p) < 0.01
    a = ops.qdrop_mix(x_q, x_fp, 0.5, seed=7)
    assert torch.equal(a, ops.qdrop_mix(x_q, x_fp, 0.5, seed=7))
    assert not torch.equal(a, ops.qdrop_mix(x_q, x_fp, 0.5, seed=8))
    # offset addresses the same stream: a slice of a bigger draw
    flat_q, flat_fp = x_q.detach().reshape(-1), x_fp.detach().reshape(-1)
    whole = ops.qdrop_mix(flat_q, flat_fp, 0.5, seed=3)
    part = ops.qdrop_mix(flat_q[:100], flat_fp[:100], 0.5, seed=3, offset=500)
    assert torch.equal(part, whole[500:600])
    gq, gfp = torch.autograd.grad(a.sum(), (x_q, x_fp))
    assert torch.equal(gq, (a == 0).float()) and torch.equal(gfp, (a == 1).float())


def test_qdrop_bad_arguments():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="p must be a probability"):
        ops.qdrop_mix(x, x, 1.5, 0)
    with pytest.raises(ValueError, match="same shape"):
        ops.qdrop_mix(x, torch.zeros(4), 0.5, 0)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        ops.qdrop_mix(x, x, 0.5, -1)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("numel", [1, 1025, 300_001])  # the last is split across OpenMP threads
def test_qdrop_mix_cpu_kernel_equals_reference(dtype, numel):
    from zsq_engine.ops import dispatch

    if "cpu" not in dispatch.implementations("qdrop_mix"):
        pytest.skip("the C++ extension (qdrop_mix_cpu) is not built")
    g = torch.Generator().manual_seed(numel)
    x_q, x_fp = torch.randn(2, numel, generator=g).to(dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for p, seed, offset in ((0.5, 3, 0), (0.1, 2 ** 40 + 7, 2 ** 32 - 9), (1.0, 0, 5)):
            with ops.use_backend("cpu"):
                got = ops.qdrop_mix(x_q, x_fp, p, seed, offset)
            with ops.use_backend("reference"):
                want = ops.qdrop_mix(x_q, x_fp, p, seed, offset)
            assert torch.equal(got, want), (p, seed, offset)
    finally:
        torch.set_num_threads(threads)
