"""Bad parameter values get the same answer from every backend (reference, the C++ CPU kernels,
Triton through its interpreter): a ValueError for Python scalars and for tensors whose values
may be read (CPU), a documented NaN propagation for tensors that are not read on the host."""
import math

import pytest
import torch

from zsq_engine import ops
from zsq_engine.ops import Epilogue

BACKENDS = [b for b in ("reference", "cpu", "triton") if b in ops.available_backends()]


@pytest.fixture(params=BACKENDS)
def backend(request):
    with ops.use_backend(request.param):
        yield request.param


def test_fake_quant_zero_point_and_grad_factor(backend):
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="zero_point must be finite"):
        ops.fake_quant(x, 0.1, math.nan, -8, 7)
    with pytest.raises(ValueError, match="zero_point must be finite everywhere"):
        ops.fake_quant(x, torch.tensor([0.1]), torch.tensor([math.nan]), -8, 7)
    with pytest.raises(ValueError, match="zero_point must be finite everywhere"):
        ops.fake_quant(x, torch.full((6,), 0.1), torch.tensor([0.0, 1, 2, math.inf, 0, 0]), -8, 7, axis=1)
    with pytest.raises(ValueError, match="scale must be finite"):
        ops.fake_quant(x, math.nan, 0, -8, 7)
    s, z = torch.tensor([0.1]), torch.tensor([0.0])
    for gf in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="grad_factor must be finite and >= 0"):
            ops.lsq_fake_quant(x, s, z, -8, 7, grad_factor=gf)
        with pytest.raises(ValueError, match="grad_factor must be finite and >= 0"):
            ops.qdrop_fake_quant(x, s, z, -8, 7, learnable=True, grad_factor=gf)
    with pytest.raises(TypeError, match="float32, float16, bfloat16"):  # fp64 x: refused, as documented
        ops.fake_quant(x.double(), 0.1, 0, -8, 7)
    # the good values still work, and fp64 scale / zero point tensors are used in fp32
    y = ops.fake_quant(x, torch.tensor([0.1], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64), -8, 7)
    ref = torch.fake_quantize_per_tensor_affine(x, 0.1, 1, -8, 7)
    assert torch.equal(y, ref)


def test_fake_quant_docstring_matches_the_dtype_policy():
    assert "fp64" not in ops.fake_quant.__doc__ or "refused" in ops.fake_quant.__doc__
    import importlib

    quant_ops = importlib.import_module("zsq_engine.ops.fake_quant")  # the package; ops.fake_quant is the function

    assert "(and fp64)" not in quant_ops.__doc__ and "not fp64" in quant_ops.__doc__


def _a_w():
    g = torch.Generator().manual_seed(0)
    return (torch.randint(-8, 8, (5, 12), generator=g, dtype=torch.int8),
            torch.randint(-8, 8, (3, 12), generator=g, dtype=torch.int8))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_qgemm_requantize_scale_is_a_value_error_everywhere(backend, bad):
    a, w = _a_w()
    for out_scale in (bad, torch.tensor([bad])):
        with pytest.raises(ValueError, match="out_scale must be finite and > 0"):
            ops.qgemm(a, w, Epilogue(weight_scale=0.1, act_scale=0.1, out_dtype=torch.int8, out_scale=out_scale))
    with pytest.raises(ValueError, match="act_scale must be finite and > 0"):
        ops.qgemm(a, w, Epilogue(weight_scale=0.1, act_scale=bad))
    x = torch.randint(-8, 8, (1, 4, 4, 2), dtype=torch.int8)
    with pytest.raises(ValueError, match="out_scale"):
        ops.qconv2d_nhwc(x, torch.ones(3, 1, 1, 2, dtype=torch.int8),
                         epilogue=Epilogue(weight_scale=0.1, act_scale=0.1, out_dtype=torch.int8, out_scale=bad))


def test_qgemm_scale_tensors_propagate_nan_and_folded_signs(backend):
    """Per-channel weight scales are not read on the host: a NaN gives NaN in that output column
    (as a NaN input would), a zero or negative scale (a folded BatchNorm) is used as given."""
    a, w = _a_w()
    scale = torch.tensor([math.nan, -0.5, 0.0])
    y = ops.qgemm(a, w, Epilogue(weight_scale=scale, act_scale=0.25))
    exact = (a.double() @ w.double().t()) * 0.25
    assert torch.isnan(y[:, 0]).all()
    assert torch.equal(y[:, 1], (exact[:, 1] * -0.5).float()) and torch.equal(y[:, 2].abs(), torch.zeros(5))
    with pytest.raises(ValueError, match="weight_scale must be finite"):
        ops.qgemm(a, w, Epilogue(weight_scale=math.nan, act_scale=0.25))


def test_empty_and_k0_products_agree_on_every_backend(backend):
    for m, k, n in ((3, 0, 2), (0, 4, 2), (3, 4, 0)):
        a, b = torch.zeros(m, k, dtype=torch.int8), torch.zeros(k, n, dtype=torch.int8)
        y = ops.int_mm(a, b)
        assert y.dtype == torch.int32 and torch.equal(y, (a.int() @ b.int()))  # K = 0: zeros, as matmul
        bias = torch.arange(n, dtype=torch.float32)
        y = ops.qgemm(a, b.t().contiguous(), Epilogue(weight_scale=0.5, act_scale=0.5, bias=bias))
        assert y.shape == (m, n) and torch.equal(y, bias.expand(m, n))  # the epilogue of a zero product


@pytest.mark.slow
def test_scale_search_refuses_a_nan_channel(backend):
    w = torch.randn(4, 9)
    w[2, 5] = math.nan
    with pytest.raises(ValueError, match="x must be finite everywhere"):
        ops.scale_search(w, -8, 7, axis=0)
    w[2, 5] = 0.0
    scale, zp = ops.scale_search(w, -8, 7, axis=0)
    assert torch.isfinite(scale).all() and (scale > 0).all()


def test_minmax_qparams_needs_ordered_finite_ranges():
    with pytest.raises(ValueError, match=r"at index 1 min_val=2.0 > max_val=1.0"):
        ops.minmax_qparams(torch.tensor([-1.0, 2.0]), torch.tensor([1.0, 1.0]), 0, 255)
    with pytest.raises(ValueError, match="max_val must be finite"):
        ops.minmax_qparams(torch.tensor([-1.0]), torch.tensor([math.nan]), 0, 255)
    with pytest.raises(ValueError, match="eps must be finite and > 0"):
        ops.minmax_qparams(torch.tensor([-1.0]), torch.tensor([1.0]), 0, 255, eps=0.0)
    # exact by hand: [-1, 3] on 0..4 -> scale 1, zero point 1; [0.5, 0.5] widened to [0, 0.5] -> 0.125, 0
    scale, zp = ops.minmax_qparams(torch.tensor([-1.0, 0.5]), torch.tensor([3.0, 0.5]), 0, 4)
    assert torch.equal(scale, torch.tensor([1.0, 0.125])) and torch.equal(zp, torch.tensor([1.0, 0.0]))


def test_calibration_of_an_unobserved_range_names_the_problem():
    """The observers reach minmax_qparams only with data; an inverted range can only come from a
    caller, and it is refused rather than turned into the range [0, 0]."""
    from zsq_engine.quant import QuantSpec
    from zsq_engine.quant.calibration import qparams_from_minmax

    spec = QuantSpec(bits=8, symmetric=False)
    with pytest.raises(ValueError, match="min_val must be <= max_val"):
        qparams_from_minmax(spec, torch.tensor([3.0]), torch.tensor([-3.0]))
