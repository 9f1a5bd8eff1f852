"""compat.accelerate as a whole: the report, mixed models, restore, parameters, round_ste, lp_loss."""
import copy
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.ao.quantization import FusedMovingAvgObsFakeQuantize

from _support.compat_refs import (AdaRoundQuantizer, GenieActivationQuantizer, GenieWeightQuantizer, LSQFakeQuantize,
                              MysteryQuantizer, OpCounter, UniformAffineQuantizer, lp_loss_ref, round_ste_ref)
from zsq_engine import compat
from zsq_engine.quant import QuantSpec, UniformQuantizer


class QuantConvLayer(nn.Module):
    """A BRECQ-like layer: holds quantizers, is not one (must not be reported as unknown)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.weight_quantizer = UniformAffineQuantizer(4, channel_wise=True)
        self.act_quantizer = UniformAffineQuantizer(4, leaf_param=True)

    def forward(self, x):
        w = self.weight_quantizer(self.conv.weight)
        return self.act_quantizer(torch.nn.functional.conv2d(x, w, self.conv.bias, padding=1).relu())


def _mixed_model():
    lsq = LSQFakeQuantize(bit=4)
    lsq.fake_quant_enabled = 1
    lsq.scale.data.fill_(0.05)
    return nn.Sequential(QuantConvLayer(), MysteryQuantizer(), GenieActivationQuantizer(4), lsq,
                         UniformQuantizer(QuantSpec(bits=4)), FusedMovingAvgObsFakeQuantize())


def test_mixed_model_report_and_numerics():
    torch.manual_seed(0)
    ref = _mixed_model()
    acc = copy.deepcopy(ref)
    params_before = {n: p for n, p in acc.named_parameters()}
    report = compat.accelerate(acc)
    assert report.accelerated == [("0.weight_quantizer", "brecq_uniform"), ("0.act_quantizer", "brecq_uniform"),
                                  ("2", "genie_activation"), ("3", "qdrop_lsq")]
    skipped = {name: (cls, reason) for name, cls, reason in report.skipped}
    assert set(skipped) == {"1", "4", "5"}  # the layer "0" holds quantizers: not reported
    assert skipped["1"][0] == "MysteryQuantizer" and "unknown" in skipped["1"][1]
    assert "already" in skipped["4"][1]
    assert skipped["5"][0] == "FusedMovingAvgObsFakeQuantize" and "own forward" in skipped["5"][1]
    assert all("forward" not in acc[i].__dict__ for i in (1, 4, 5))
    text = str(report)
    assert "4 quantizer(s) accelerated, 3 left alone" in text and "MysteryQuantizer" in text
    x = torch.randn(2, 3, 8, 8)
    acc[4].set_qparams(torch.tensor([0.05]), torch.tensor([0.0]))
    ref[4].set_qparams(torch.tensor([0.05]), torch.tensor([0.0]))
    for _ in range(2):  # first call initialises the lazy quantizers, the second runs fused
        xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yr = acc(xa), ref(xr)
        assert torch.equal(ya, yr)
        ya.sum().backward()
        yr.sum().backward()
        assert torch.equal(xa.grad, xr.grad)
    for (na, pa), (nr, pr) in zip(acc.named_parameters(), ref.named_parameters()):
        assert na == nr and torch.equal(pa.grad, pr.grad), na
    params_after = dict(acc.named_parameters())  # lazily created ones join; the others are the same objects
    assert all(params_after[n] is p for n, p in params_before.items())
    assert list(acc.state_dict()) == list(ref.state_dict())
    assert isinstance(acc[0].weight_quantizer, UniformAffineQuantizer)


def _recognised_but_unsupported(kind):
    weight = torch.randn(4, 3)
    if kind == "adaround_zeta":
        uaq = UniformAffineQuantizer(4, channel_wise=True)
        uaq(weight)
        module = AdaRoundQuantizer(uaq, weight)
        module.zeta = 1.2
    elif kind == "genie_zeta":
        module = GenieWeightQuantizer(weight)
        module.sigmoid.zeta = 1.2
    elif kind == "qdrop_adaround":
        module = LSQFakeQuantize(bit=4)
        module.adaround = True  # QDrop's AdaRoundFakeQuantize carries this flag
    else:
        module = LSQFakeQuantize(bit=4)
        del module.use_grad_scaling
    return module


@pytest.mark.parametrize("kind,reason", [("adaround_zeta", "zeta=1.2"), ("genie_zeta", "zeta=1.2"),
                                         ("qdrop_adaround", "AdaRoundFakeQuantize"),
                                         ("qdrop_no_grad_scaling", "use_grad_scaling")])
def test_recognised_but_unsupported_quantizers_are_listed_with_the_reason(kind, reason):
    module = _recognised_but_unsupported(kind)
    report = compat.accelerate(nn.Sequential(module))
    assert report.accelerated == []
    assert [(name, cls) for name, cls, _ in report.skipped] == [("0", type(module).__name__)]
    assert reason in report.skipped[0][2]
    assert "forward" not in module.__dict__


def test_optimizer_built_before_accelerate_still_updates():
    torch.manual_seed(0)
    q = LSQFakeQuantize(bit=4)
    q.fake_quant_enabled = 1
    q.scale.data.fill_(0.1)
    ref = copy.deepcopy(q)
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (q, ref)]
    compat.accelerate(q)
    x = torch.randn(8, 4, 5, 5)
    for m, opt in zip((q, ref), opts):
        m(x).square().sum().backward()
        opt.step()
    assert not torch.equal(q.scale, torch.tensor([0.1]))
    assert torch.equal(q.scale, ref.scale)


def test_restore_context_manager_and_idempotence():
    model = nn.Sequential(UniformAffineQuantizer(4), UniformAffineQuantizer(4))
    with compat.accelerate(model) as report:
        assert len(report.accelerated) == 2
        assert all("forward" in m.__dict__ for m in model)
        again = compat.accelerate(model)  # second call: listed, not patched twice
        assert again.accelerated == report.accelerated
        assert again.restore() == 0
    assert all("forward" not in m.__dict__ for m in model)
    compat.accelerate(model)
    assert compat.restore(model) == 2 and compat.restore(model) == 0


def test_save_load_and_deepcopy_keep_the_fused_forward(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(UniformAffineQuantizer(4, leaf_param=True), MysteryQuantizer())
    x = torch.randn(2, 3, 4, 4)
    expected = model(x)  # initialises the lazy quantizer
    compat.accelerate(model)
    torch.save(model, tmp_path / "model.pt")  # whole-model pickling, as research scripts do
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    for other in (loaded, copy.deepcopy(model)):
        assert other[0].forward.module is other[0]  # bound to the copy, not to the original
        counter = OpCounter(monkeypatch)
        assert torch.equal(other(x), expected)
        assert counter.calls["fake_quant"] == 1
        assert compat.restore(other) == 1


def test_unsupported_inputs_run_the_original_forward(monkeypatch):
    q = UniformAffineQuantizer(4, leaf_param=True)
    x = torch.randn(3, 5, dtype=torch.float64)
    q(x)
    ref = copy.deepcopy(q)
    compat.accelerate(q)
    counter = OpCounter(monkeypatch)
    assert torch.equal(q(x), ref(x))  # float64: no fused kernel, the class's own forward
    assert sum(counter.calls.values()) == 0


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        compat.accelerate(torch.zeros(3))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        compat.restore("model")
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        compat.round_ste([1.0])
    with pytest.raises(TypeError, match="x must be a floating-point"):
        compat.round_ste(torch.arange(3))
    with pytest.raises(TypeError, match="pred must be a torch.Tensor"):
        compat.lp_loss(1.0, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="dim 1"):
        compat.lp_loss(torch.zeros(3), torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_round_ste_matches_research_helper(dtype):
    big = [2049.0, -60000.0] if dtype == torch.float16 else [1e7 + 0.5, -3e8]  # finite in every dtype
    x = torch.cat([torch.randn(1000) * 10, torch.arange(-8, 8) + 0.5, torch.tensor(big + [0.0])]).to(dtype)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yr = compat.round_ste(xa), round_ste_ref(xr)
    assert torch.equal(ya, yr) and torch.equal(ya, torch.round(x))  # ties to even, like the original
    g = torch.randn_like(x)
    ya.backward(g)
    yr.backward(g)
    assert torch.equal(xa.grad, xr.grad)


def test_round_ste_infinity_is_the_documented_difference():
    x = torch.tensor([float("inf"), -float("inf")])
    assert torch.equal(compat.round_ste(x), x)
    assert torch.isnan(round_ste_ref(x)).all()  # the research helper computes inf - inf


@pytest.mark.parametrize("p", [2.0, 2, 2.4, 1.0])
@pytest.mark.parametrize("reduction", ["none", "all"])
def test_lp_loss_matches_research_helper(p, reduction):
    torch.manual_seed(1)
    pred, tgt = torch.randn(8, 32, 9, 9), torch.randn(8, 32, 9, 9)
    pa, pr = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    ta, tr = tgt.clone().requires_grad_(), tgt.clone().requires_grad_()
    la, lr = compat.lp_loss(pa, ta, p=p, reduction=reduction), lp_loss_ref(pr, tr, p=p, reduction=reduction)
    assert torch.equal(la, lr)
    g = torch.rand(()) * 3  # not 1: the upstream gradient takes part in the rounding
    la.backward(g)
    lr.backward(g)
    assert torch.equal(pa.grad, pr.grad) and torch.equal(ta.grad, tr.grad)


@pytest.mark.slow
@pytest.mark.subprocess
def test_import_stays_light():
    code = ("import sys, zsq_engine; assert 'zsq_engine.compat' not in sys.modules; import zsq_engine.compat; "
            "bad = [m for m in ('triton', 'zsq_engine._C', 'zsq_engine.kernels') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("step_shape", [(), (1,), (1, 1, 1, 1)])
@pytest.mark.parametrize("x_grad", [True, False])
def test_divide_by_step_has_autograds_bits(step_shape, x_grad):
    from zsq_engine.compat._common import divide_by_step

    torch.manual_seed(2)
    x = torch.randn(4, 8, 7, 7) * 3
    g = torch.randn_like(x)
    grads = []
    for divide in (divide_by_step, torch.div):
        xi = x.clone().requires_grad_(x_grad)
        step = torch.full(step_shape, 0.173, requires_grad=True)
        out = divide(xi, step)
        assert out.shape == x.shape
        out.backward(g)
        grads.append((out.detach(), xi.grad, step.grad))
    (oa, xa, sa), (ob, xb, sb) = grads
    assert torch.equal(oa, ob) and torch.equal(sa, sb)
    assert (xa is None and xb is None) if not x_grad else torch.equal(xa, xb)
