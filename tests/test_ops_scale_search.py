"""Vectorised Lp clipping search against a per-channel Python loop written from BRECQ's description."""
import pytest
import torch

from zsq_engine import ops


def _loop_search(x2d, qmin, qmax, n, p):
    scales, zps = [], []
    for row in x2d:
        best = (float("inf"), None, None)
        lo, hi = min(float(row.min()), 0.0), max(float(row.max()), 0.0)
        for i in range(n):
            r = 1.0 - 0.01 * i
            new_lo, new_hi = lo * r, hi * r
            s = max((new_hi - new_lo) / (qmax - qmin), 1e-8)
            z = min(max(qmin - round(new_lo / s), qmin), qmax)  # python round is half-even too
            s_t = torch.tensor(s, dtype=torch.float32)
            q = torch.clamp(torch.round(row * (1 / s_t)) + z, qmin, qmax)
            err = float(((q - z) * s_t - row).abs().pow(p).mean())
            if err < best[0]:
                best = (err, s, z)
        scales.append(best[1])
        zps.append(best[2])
    return torch.tensor(scales), torch.tensor(zps, dtype=torch.float32)


@pytest.mark.parametrize("shape,axis", [((5, 3, 3, 3), 0), ((4, 7), 1), ((1, 123), 0), ((33,), None)])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_scale_search_matches_loop(shape, axis, bits, device):
    qmin, qmax = 0, 2 ** bits - 1
    x = torch.randn(shape) * torch.rand(shape) * 3  # heavy-ish tails
    scale, zp = ops.scale_search(x.to(device), qmin, qmax, axis=axis, num_candidates=80, p=2.4)
    x2d = x.reshape(1, -1) if axis is None else x.movedim(axis, 0).reshape(shape[axis], -1)
    ref_s, ref_z = _loop_search(x2d, qmin, qmax, 80, 2.4)
    torch.testing.assert_close(scale.cpu(), ref_s, rtol=1e-5, atol=0)
    assert torch.equal(zp.cpu(), ref_z)


def test_scale_search_clips_outliers(device):
    x = torch.randn(4, 4096)
    x[:, 0] = 40.0  # one outlier per channel: the best 4-bit range clips it
    scale, _ = ops.scale_search(x.to(device), 0, 15, axis=0)
    minmax_scale, _ = ops.minmax_qparams(x.amin(1), x.amax(1), 0, 15)
    assert (scale.cpu() < 0.7 * minmax_scale).all()


def test_minmax_qparams_formulas():
    s, z = ops.minmax_qparams(torch.tensor([-1.0, 0.5]), torch.tensor([3.0, 2.0]), 0, 255)
    torch.testing.assert_close(s, torch.tensor([4.0 / 255, 2.0 / 255]))
    torch.testing.assert_close(z, torch.tensor([float(round(255 / 4)), 0.0]))
    s, z = ops.minmax_qparams(torch.tensor([-1.0]), torch.tensor([3.0]), -8, 7, symmetric=True)
    torch.testing.assert_close(s, torch.tensor([3.0 / 7.5]))
    assert float(z) == 0.0
    s, z = ops.minmax_qparams(torch.tensor([0.0]), torch.tensor([0.0]), 0, 15)
    assert float(s) > 0


def test_scale_search_bad_arguments():
    with pytest.raises(ValueError, match="num_candidates"):
        ops.scale_search(torch.randn(3, 3), 0, 15, num_candidates=0)
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        ops.scale_search(torch.randn(3, 3), 0, 15, axis=2)
    with pytest.raises(ValueError, match="must not be empty"):
        ops.scale_search(torch.randn(0), 0, 15, axis=None)
