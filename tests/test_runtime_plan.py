"""The prepared integer CPU calls (ops.int_conv.cpu.prepare_conv / ops.int_gemm.cpu.prepare_linear) and the
static execution plan of IntModel: same numbers as the public ops / the step-by-step program."""
import pytest
import torch

from zsq_engine.ops import Epilogue, qconv2d_nhwc, qgemm
from zsq_engine.ops.dispatch import backend_status

pytestmark = pytest.mark.skipif(not backend_status("cpu")[0], reason="C++ extension not built")


def _epilogue(n, out_dtype, act_zp=3, relu=True, residual_q=None):
    g = torch.Generator().manual_seed(n)
    ep = Epilogue(weight_scale=torch.rand(n, generator=g) * 0.02 + 0.001, act_scale=0.05, act_zero_point=act_zp,
                  bias=torch.randn(n, generator=g), activation="relu" if relu else "none", out_dtype=out_dtype,
                  out_scale=0.1 if out_dtype != torch.float32 else None,
                  out_zero_point=0 if out_dtype != torch.float32 else 0,
                  quant_min=0 if out_dtype == torch.uint8 else None, quant_max=255 if out_dtype == torch.uint8 else None)
    if residual_q is not None:
        ep.residual_scale, ep.residual_zero_point = residual_q
    return ep


@pytest.mark.parametrize("groups,out_dtype,residual", [(1, torch.uint8, None), (1, torch.float32, "float"),
                                                       (2, torch.uint8, "int8"), (8, torch.float32, None)])
def test_prepared_conv_equals_public_op(groups, out_dtype, residual):
    from zsq_engine.ops.int_conv.cpu import prepare_conv

    g = torch.Generator().manual_seed(0)
    c, o = 8, 8 if groups == 8 else 24
    x = torch.randint(0, 256, (2, 9, 7, c), generator=g, dtype=torch.int32).to(torch.uint8)
    w = torch.randint(-127, 128, (o, 3, 3, c // groups), generator=g, dtype=torch.int32).to(torch.int8)
    res = None
    if residual == "float":
        res = torch.randn(2, 5, 4, o, generator=g)
    elif residual == "int8":
        res = torch.randint(-128, 128, (2, 5, 4, o), generator=g, dtype=torch.int32).to(torch.int8)
    ep = _epilogue(o, out_dtype, residual_q=(0.07, -2) if residual == "int8" else None)
    conv = prepare_conv(w, ep, stride=(2, 2), padding=(1, 1), groups=groups, pad_value=3,
                        residual_dtype=None if res is None else res.dtype)
    assert conv.depthwise == (groups == 8)
    ep.residual = res
    want = qconv2d_nhwc(x, w, (2, 2), (1, 1), (1, 1), groups, ep, pad_value=3)
    got = conv(x, res)
    assert got.dtype == want.dtype and torch.equal(got, want)
    # the bound call is reusable: a second input gives the public op's answer for it
    x2 = torch.randint(0, 256, x.shape, generator=g, dtype=torch.int32).to(torch.uint8)
    assert torch.equal(conv(x2, res), qconv2d_nhwc(x2, w, (2, 2), (1, 1), (1, 1), groups, ep, pad_value=3))


@pytest.mark.parametrize("w_packed", [False, True])
def test_prepared_linear_equals_public_op(w_packed):
    from zsq_engine.ops import pack_int4
    from zsq_engine.ops.int_gemm.cpu import prepare_linear

    g = torch.Generator().manual_seed(1)
    a = torch.randint(-128, 128, (5, 37), generator=g, dtype=torch.int32).to(torch.int8)
    lo, hi = (-8, 8) if w_packed else (-127, 128)
    w = torch.randint(lo, hi, (11, 37), generator=g, dtype=torch.int32).to(torch.int8)
    wk = pack_int4(w) if w_packed else w
    ep = _epilogue(11, torch.float32, act_zp=0, relu=False)
    lin = prepare_linear(wk, ep, w_packed=w_packed, k=37)
    assert lin.out_features == 11
    want = qgemm(a, wk, ep, w_packed=True, k=37) if w_packed else qgemm(a, wk, ep)
    assert torch.equal(lin(a), want)
    # float64 check of the same product (independent of the kernels)
    ref = (a.double() @ w.double().t()) * (ep.weight_scale.double() * 0.05) + ep.bias.double()
    assert torch.allclose(lin(a).double(), ref, rtol=1e-5, atol=1e-4)


def test_prepared_call_writes_buffers_and_codes():
    """out= buffers are written in place; a codes grid gives the fp32 output's codes with the
    fake-quant op's arithmetic (runtime.quantize.quantize), bit for bit."""
    from zsq_engine.ops.int_conv.cpu import prepare_conv
    from zsq_engine.ops.int_gemm.cpu import prepare_linear
    from zsq_engine.runtime.qparams import ActQParams
    from zsq_engine.runtime.quantize import quantize

    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (2, 6, 6, 16), generator=g, dtype=torch.int32).to(torch.uint8)
    w = torch.randint(-127, 128, (32, 3, 3, 16), generator=g, dtype=torch.int32).to(torch.int8)
    res = torch.randn(2, 6, 6, 32, generator=g)
    ep = _epilogue(32, torch.float32)
    plain = prepare_conv(w, ep, padding=(1, 1), pad_value=3, residual_dtype=torch.float32)
    want = plain(x, res)
    buf = torch.empty(2, 6, 6, 32)
    assert plain(x, res, out=buf).data_ptr() == buf.data_ptr() and torch.equal(buf, want)
    for grid in (ActQParams(0.037, 0, 0, 255), ActQParams(0.05, -3, -8, 7)):  # uint8 / signed 4-bit grids
        both = prepare_conv(w, ep, padding=(1, 1), pad_value=3, residual_dtype=torch.float32,
                            codes=grid)
        y, q = both(x, res)
        assert torch.equal(y, want)
        assert q.dtype == grid.dtype and torch.equal(q, quantize(want, grid))
    lin_ep = _epilogue(8, torch.float32, act_zp=0, relu=False)
    a = torch.randint(-128, 128, (3, 20), generator=g, dtype=torch.int32).to(torch.int8)
    wl = torch.randint(-127, 128, (8, 20), generator=g, dtype=torch.int32).to(torch.int8)
    grid = ActQParams(0.2, 128, 0, 255)
    y, q = prepare_linear(wl, lin_ep, codes=ActQParams(0.2, 128, 0, 255))(a)
    assert torch.equal(q, quantize(y, grid)) and torch.equal(y, qgemm(a, wl, lin_ep))
    with pytest.raises(ValueError, match="needs an fp32-output epilogue"):
        prepare_conv(w, _epilogue(32, torch.uint8), codes=ActQParams(0.1, 0, 0, 255))
    with pytest.raises(RuntimeError, match="prepared without a residual"):
        prepare_conv(w, ep, padding=(1, 1))(x, res)
    with pytest.raises(RuntimeError, match="out must be a contiguous"):
        plain(x, res, out=torch.empty(2, 6, 6, 31))


def test_prepare_rejects_bad_arguments():
    from zsq_engine.ops.int_conv.cpu import prepare_conv
    from zsq_engine.ops.int_gemm.cpu import prepare_linear

    w = torch.zeros(4, 3, 3, 2, dtype=torch.int8)
    with pytest.raises(ValueError, match="w must be an int8 CPU tensor"):
        prepare_conv(w.float())
    ep = _epilogue(4, torch.float32)
    ep.residual = torch.zeros(1, 1, 1, 4)
    with pytest.raises(ValueError, match="residual must be None when preparing"):
        prepare_conv(w, ep)
    with pytest.raises(TypeError, match="epilogue must be an Epilogue"):
        prepare_linear(torch.zeros(4, 8, dtype=torch.int8), epilogue=(1, 2))


# ---------------------------------------------------------------------------------- static plan
def _models():
    from _support.runtime import healthy, ptq
    from zsq_engine.models import get_model

    torch.manual_seed(0)
    yield "fmnist_resnet w8a8 8-bit input", ptq(get_model("fmnist_resnet", pretrained=True), (1, 28, 28), 8, 8,
                                                quantize_first_input=True), (1, 28, 28)
    yield "fmnist_resnet w4a4", ptq(get_model("fmnist_resnet", pretrained=True), (1, 28, 28), 4, 4), (1, 28, 28)
    yield "mobilenet_v2 w8a8", ptq(healthy(get_model("mobilenet_v2", num_classes=10), (3, 32, 32), batches=1),
                                   (3, 32, 32), 8, 8), (3, 32, 32)


@pytest.fixture(scope="module")
def converted():
    from zsq_engine.runtime import convert

    return [(name, convert(q), shape) for name, q, shape in _models()]


@pytest.mark.parametrize("buffers", [False, True])
def test_plan_equals_step_by_step_run(converted, buffers):
    """Bit for bit: the plan calls the same kernels on the same values and quantizes with the
    same fp32 operations; the buffers it reuses must not leak between calls."""
    for name, im, shape in converted[:1] if buffers else converted:
        im.plan_buffers = buffers
        g = torch.Generator().manual_seed(2)
        xs = [torch.randn(3, *shape, generator=g) for _ in range(3)]
        im.use_plan = False
        want = [im.run(x) for x in xs]
        im.use_plan = True
        im.drop_plans()
        got = [im(x) for x in xs] + [im(x) for x in xs]  # the first call builds the plan
        assert len(im._plans) == 1, name
        for i, y in enumerate(got):
            assert torch.equal(y, want[i % 3]), f"{name}: call {i}"
        assert got[0].data_ptr() != got[3].data_ptr()  # outputs are fresh tensors, not plan buffers
        y1 = im(xs[0][:1])  # another shape: another plan
        assert len(im._plans) == 2 and torch.equal(y1, im.run(xs[0][:1]))
        if "8-bit input" in name:
            # the integer stem's fp32 output is also quantized for the next conv: one pass writes both
            assert im.layers["conv1"]._codes_launches, "the stem did not write its codes in its epilogue"
        im.plan_buffers = False


def test_plan_yields_to_forced_backend_and_moves(converted):
    from zsq_engine.ops import use_backend

    name, im, shape = converted[1]
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(3))
    fast = im(x)
    im(x)
    calls = []
    launched = [m for m in im.layers.values() if m._launch is not None]
    for m in launched:
        inner = m._launch
        m._launch = lambda *a, inner=inner: calls.append(1) or inner(*a)
    with use_backend("reference"):
        ref = im(x)
    assert not calls  # the plan is not used while another backend is forced
    assert (ref - fast).abs().max() < 0.05 * (1 + ref.abs().max())
    assert torch.equal(im(x), fast) and len(calls) == len(launched)  # the plan calls each layer's launch
    for m in launched:
        m._launch = None  # no prepared call: the plan runs the layer's own forward (public op)
    assert torch.equal(im(x), fast)
    im.to(torch.float32)  # any _apply drops the plans (they point at the old buffers)
    assert not im._plans
    assert torch.equal(im(x), fast)


def test_plan_built_under_inference_mode_runs_outside_it(converted):
    name, im, shape = converted[0]
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(5))
    want = im.run(x)
    im.drop_plans()
    with torch.inference_mode():
        assert torch.equal(im(x), want) and torch.equal(im(x), want)
    assert torch.equal(im(x), want)  # the same plan, its buffers written outside inference mode
