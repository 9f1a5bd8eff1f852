"""BN folding, Quant* modules and whole-model quantization (quantize_model / calibrate / naive_ptq)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zsq_engine.quant import (QuantConv2d, QuantLinear, QuantSpec, calibrate_activations, find_conv_bn_pairs,
                              fold_bn, fold_model_bn, format_quant_layers, list_quant_layers, naive_ptq,
                              quant_layers, quantize_model, set_quant_state)


def _randomize_bn(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


def _sqnr_db(ref, test):
    return (10 * torch.log10(ref.pow(2).sum() / (ref - test).pow(2).sum().clamp_min(1e-30))).item()


class Block(nn.Module):
    """torchvision-style basic block: convN -> bnN, shortcut Sequential(conv, bn)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 16, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer1(self.stem(x))), 1))


class Untraceable(TinyResNet):
    """Data-dependent control flow: torch.fx cannot trace it, so folding uses attribute names."""

    def forward(self, x):
        if x.sum() > 1e9:
            x = x * 0
        return super().forward(x)


class SharedOutput(nn.Module):
    """The conv output feeds the BN AND the skip: folding would change the skip, so it must not fold."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def _model(seed=0, cls=TinyResNet):
    torch.manual_seed(seed)
    return _randomize_bn(cls(), seed).eval()


# ----------------------------------------------------------------------------- fold_bn

CONV_CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=1, padding=1, dilation=1, groups=1, bias=True),
    dict(in_channels=4, out_channels=8, kernel_size=3, stride=2, padding=0, dilation=1, groups=2, bias=False),
    dict(in_channels=6, out_channels=6, kernel_size=3, stride=1, padding=2, dilation=2, groups=6, bias=True),
    dict(in_channels=3, out_channels=5, kernel_size=(1, 3), stride=(2, 1), padding=(0, 1), dilation=1, groups=1,
         bias=False),
    dict(in_channels=3, out_channels=4, kernel_size=3, stride=1, padding=1, dilation=1, groups=1, bias=True,
         padding_mode="reflect"),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_fold_bn_equivalence(case, affine):
    torch.manual_seed(1)
    conv = nn.Conv2d(**case)
    bn = _randomize_bn(nn.BatchNorm2d(case["out_channels"], affine=affine, eps=1e-3)).eval()
    x = torch.randn(2, case["in_channels"], 9, 11)
    folded = fold_bn(conv, bn)
    assert isinstance(folded, nn.Conv2d) and folded.bias is not None
    assert (folded.stride, folded.padding, folded.dilation, folded.groups, folded.padding_mode) == \
        (conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
        # in float64 the fold is exact up to float64 rounding
        conv64, bn64 = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
        torch.testing.assert_close(fold_bn(conv64, bn64)(x.double()), bn64(conv64(x.double())),
                                   rtol=1e-12, atol=1e-12)


def test_fold_bn_errors_and_inputs_untouched():
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(5)
    with pytest.raises(ValueError, match="num_features"):
        fold_bn(conv, bn)
    with pytest.raises(ValueError, match="running statistics"):
        fold_bn(conv, nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(TypeError, match="conv"):
        fold_bn(nn.Linear(3, 4), nn.BatchNorm2d(4))
    bn4 = _randomize_bn(nn.BatchNorm2d(4))
    w = conv.weight.detach().clone()
    fold_bn(conv, bn4)
    assert torch.equal(conv.weight, w)


@pytest.mark.parametrize("cls,how", [(TinyResNet, "fx"), (Untraceable, "names")])
def test_fold_model_bn(cls, how):
    model = _model(2, cls)
    pairs, used = find_conv_bn_pairs(model)
    assert used == how
    assert len(pairs) == 6  # stem, 2 x (conv1, conv2), one downsample
    x = torch.randn(4, 3, 12, 12)
    folded = fold_model_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


class SamePad(nn.Module):
    """Parameter-free helper with shape-dependent control flow (TF 'same' padding style)."""

    def forward(self, x):
        if x.shape[-1] % 2 == 0:
            return F.pad(x, (0, 1, 0, 1))
        return x


class LukemelasStyle(nn.Module):
    """BN names unrelated to conv names (``_conv_stem``/``_bn0``, ``_expand_conv``/``_bn1``)."""

    def __init__(self, data_dependent=False):
        super().__init__()
        self.data_dependent = data_dependent
        self._pad = SamePad()
        self._conv_stem = nn.Conv2d(3, 6, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(6)
        self._act = nn.ReLU6()
        self._expand_conv = nn.Conv2d(6, 12, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(12)

    def forward(self, x):
        if self.data_dependent and x.mean() > 1e9:
            x = -x
        return self._bn1(self._expand_conv(self._act(self._bn0(self._conv_stem(self._pad(x))))))


@pytest.mark.parametrize("data_dependent,how", [(False, "fx"), (True, "names")])
def test_fold_lukemelas_style(data_dependent, how):
    model = _randomize_bn(LukemelasStyle(data_dependent)).eval()
    pairs, used = find_conv_bn_pairs(model)
    assert used == how and sorted(pairs) == [("_conv_stem", "_bn0"), ("_expand_conv", "_bn1")]
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(fold_model_bn(model)(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_model_bn_skips_shared_conv_output():
    model = _randomize_bn(SharedOutput()).eval()
    folded = fold_model_bn(model)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


class PaddedConv(nn.Conv2d):
    """A conv subclass with its own forward (static asymmetric padding, as 'same'-padding ports do)."""

    def forward(self, x):
        return super().forward(F.pad(x, (0, 1, 0, 1)))


class CustomConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = PaddedConv(3, 4, 2)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv2(self.bn(self.conv(x))).mean((2, 3)))


def test_custom_forward_conv_kept():
    model = _randomize_bn(CustomConvNet()).eval()
    x = torch.randn(2, 3, 6, 6)
    folded = fold_model_bn(model)
    assert type(folded.conv) is PaddedConv and isinstance(folded.bn, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning, match="custom forward"):
        q = quantize_model(model, 8, 8, weight_method="minmax")
    assert type(q.conv) is PaddedConv and isinstance(q.conv2, QuantConv2d)
    assert q.conv2.act_bits is None  # first quantized layer in call order


def test_fold_model_bn_inplace():
    model = _model(3)
    out = fold_model_bn(model, inplace=True)
    assert out is model and isinstance(model.layer1[0].bn1, nn.Identity)


# ----------------------------------------------------------------------------- Quant* modules

@pytest.mark.parametrize("case", CONV_CASES)
def test_quant_conv_matches_reference(case):
    torch.manual_seed(4)
    conv = nn.Conv2d(**case)
    x = torch.randn(2, case["in_channels"], 8, 9)
    wspec, aspec = QuantSpec(4, per_channel=True, axis=0), QuantSpec(6)
    q = QuantConv2d(conv, wspec, aspec)
    assert q.weight is conv.weight and q.bias is conv.bias
    assert "w_bits=4" in repr(q) and "a_bits=6" in repr(q)
    q.calibrate_weight("minmax")
    q.act_quantizer.set_qparams(torch.tensor([0.05]), torch.tensor([30.0]))
    # independent reference: PyTorch's fake-quant ops + the float conv module
    wq = torch.fake_quantize_per_channel_affine(conv.weight, q.weight_quantizer.scale,
                                                q.weight_quantizer.zero_point.int(), 0, 0, 15)
    xq = torch.fake_quantize_per_tensor_affine(x, 0.05, 30, 0, 63)
    ref = conv._conv_forward(xq, wq, conv.bias)
    torch.testing.assert_close(q(x), ref)
    set_quant_state(q, weight=False, act=False)
    torch.testing.assert_close(q(x), conv(x))
    torch.testing.assert_close(q.to_float()(x), conv(x))


def test_quant_linear_and_float_operands():
    torch.manual_seed(5)
    lin = nn.Linear(7, 3)
    q = QuantLinear(lin, QuantSpec(8, per_channel=True), None).calibrate_weight("mse")
    assert q.act_bits is None and q.weight_bits == 8
    x = torch.randn(4, 7)
    torch.testing.assert_close(q(x), F.linear(x, q.quantized_weight(), lin.bias))
    assert "a_bits=float" in repr(q)
    qf = QuantLinear(lin, None, None)
    torch.testing.assert_close(qf(x), lin(x))
    with pytest.raises(TypeError, match="linear"):
        QuantLinear(nn.Conv2d(1, 1, 1))


# ----------------------------------------------------------------------------- quantize_model

def _calib(seed=10, n=4, batch=16):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 12, 12, generator=gen) for _ in range(n)]


def test_bit_policy():
    model = _model(6)
    q = quantize_model(model, 4, 6)
    rows = {r.name: r for r in list_quant_layers(q)}
    assert (rows["stem.0"].weight_bits, rows["stem.0"].act_bits) == (8, None)
    assert (rows["fc"].weight_bits, rows["fc"].act_bits) == (8, 8)
    inner = [r for n, r in rows.items() if n not in ("stem.0", "fc")]
    assert len(inner) == 5 and all((r.weight_bits, r.act_bits) == (4, 6) for r in inner)
    assert all(r.weight_per_channel for r in rows.values())
    assert isinstance(q.fc, QuantLinear) and isinstance(q.layer1[1].downsample[0], QuantConv2d)
    assert "stem.0" in format_quant_layers(q)
    # weights calibrated, activations not yet
    assert all(m.weight_quantizer.calibrated for _, m in quant_layers(q))
    assert not rows["fc"].calibrated

    q2 = quantize_model(model, 4, 6, first_last_bits=None, quantize_first_input=True, weight_method="minmax")
    rows2 = {r.name: r for r in list_quant_layers(q2)}
    assert (rows2["stem.0"].weight_bits, rows2["stem.0"].act_bits) == (4, 6)
    assert (rows2["fc"].weight_bits, rows2["fc"].act_bits) == (4, 6)
    q3 = quantize_model(model, 4, 4, quantize_first_input=True, fold_bn=False, weight_method="minmax")
    assert q3.stem[0].act_bits == 8 and isinstance(q3.stem[1], nn.BatchNorm2d)


def test_w8a8_close_and_w4a4_worse():
    model = _model(7)
    x = _calib(99, n=1, batch=32)[0]
    with torch.no_grad():
        ref = model(x)
        q8 = naive_ptq(model, _calib(), 8, 8, progress=False)
        s8 = _sqnr_db(ref, q8(x))
        q4 = naive_ptq(model, _calib(), 4, 4, progress=False)
        s4 = _sqnr_db(ref, q4(x))
    assert s8 > 25.0, s8
    assert s4 < s8 - 6.0, (s4, s8)
    assert all(r.calibrated for r in list_quant_layers(q8))


@pytest.mark.parametrize("act_method", ["percentile", "mse"])
def test_other_activation_methods(act_method):
    model = _model(8)
    x = _calib(98, n=1)[0]
    with torch.no_grad():
        q = naive_ptq(model, _calib(n=2, batch=8), 8, 8, act_method=act_method, weight_method="minmax",
                      progress=False)
        assert _sqnr_db(model(x), q(x)) > 25.0


def test_quant_state_off_equals_folded_float():
    model = _model(9)
    # snap_bias=False: rounding the biases onto the accumulator grid is quantization too, and no
    # quantizer switch undoes it; this checks the switches
    q = naive_ptq(model, _calib(n=2), 4, 4, progress=False, symmetric_weights=True, symmetric_acts=True,
                  weight_method="minmax", snap_bias=False)
    set_quant_state(q, weight=False, act=False)
    x = _calib(97, n=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(q(x), model(x), rtol=1e-4, atol=1e-5)


def test_state_dict_roundtrip():
    model = _model(11)
    q = naive_ptq(model, _calib(), 4, 8, progress=False)
    fresh = quantize_model(_model(12), 4, 8, weight_method="minmax")  # different weights, uncalibrated activations
    fresh.load_state_dict(q.state_dict())
    x = _calib(96, n=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), q(x))


def test_inplace_shares_parameters_and_train_mode_kept():
    model = _model(13)
    w = model.fc.weight
    model.train()
    q = quantize_model(model, 8, 8, inplace=True, fold_bn=False, weight_method="minmax")
    assert q is model and q.fc.weight is w and q.training
    calibrate_activations(q, _calib(n=1), progress=False)
    assert q.training  # restored after eval-mode calibration


def test_calibrate_num_batches_and_tuples():
    model = _model(14)
    batches = [b * (1 + i) for i, b in enumerate(_calib(n=5))]  # later batches have wider ranges
    labelled = [(b, torch.zeros(b.shape[0], dtype=torch.long)) for b in batches]
    qmodel = quantize_model(model, 8, 8, weight_method="minmax")
    qa = calibrate_activations(copy.deepcopy(qmodel), labelled, num_batches=2, progress=False)
    qb = calibrate_activations(copy.deepcopy(qmodel), batches[:2], progress=False)
    qc = calibrate_activations(copy.deepcopy(qmodel), batches, progress=False)
    sa, sb, sc = (m.layer1[0].conv1.act_quantizer.scale for m in (qa, qb, qc))
    assert torch.equal(sa, sb) and not torch.equal(sa, sc)
    qd = calibrate_activations(copy.deepcopy(qmodel), torch.cat(batches[:2]), progress=False)
    assert torch.equal(qd.layer1[0].conv1.act_quantizer.scale, sb)


def test_unused_layer_warns():
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.aux = nn.Linear(4, 2)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.conv(x).mean((2, 3)))

    q = quantize_model(WithAux(), 8, 8, first_last_bits=None)
    with pytest.warns(UserWarning, match="aux"):
        calibrate_activations(q, _calib(n=1), progress=False)
    assert q.head.act_quantizer.calibrated and not q.aux.act_quantizer.calibrated


def test_argument_errors():
    model = _model(15)
    for kwargs, name in [(dict(wbits=1, abits=8), "wbits"), (dict(wbits=8, abits=9), "abits"),
                         (dict(wbits=8, abits=8, first_last_bits=16), "first_last_bits")]:
        with pytest.raises(ValueError, match=name):
            quantize_model(model, **kwargs)
    with pytest.raises(TypeError, match="wbits"):
        quantize_model(model, 4.0, 8)
    with pytest.raises(ValueError, match="weight_method"):
        quantize_model(model, 8, 8, weight_method="percentile")
    with pytest.raises(ValueError, match="act_method"):
        quantize_model(model, 8, 8, act_method="kl")
    with pytest.raises(ValueError, match="no nn.Conv2d or nn.Linear"):
        quantize_model(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3)), 8, 8)
    q = quantize_model(model, 8, 8, weight_method="minmax")
    with pytest.raises(ValueError, match="already"):
        quantize_model(q, 8, 8)
    with pytest.raises(ValueError, match="empty"):
        calibrate_activations(q, [], progress=False)
    with pytest.raises(ValueError, match="empty"):
        naive_ptq(model, iter(()), 8, 8, progress=False)
    with pytest.raises(ValueError, match="num_batches"):
        calibrate_activations(q, _calib(n=1), num_batches=0, progress=False)
    with pytest.raises(ValueError, match="quantize_model"):
        calibrate_activations(model, _calib(n=1), progress=False)
    with pytest.raises(RuntimeError, match="calibration"):
        q(_calib(n=1)[0])  # activations not calibrated yet


# ----------------------------------------------------------------------------- trained Fashion-MNIST model

def _fmnist():
    try:
        from zsq_engine.data import load_fashion_mnist, normalize_fashion_mnist
        from zsq_engine.models import get_model
    except ImportError as exc:
        pytest.skip(f"zsq_engine.models / zsq_engine.data not available: {exc}")
    try:
        model = get_model("fmnist_resnet", pretrained=True)
    except (FileNotFoundError, RuntimeError, ValueError, OSError) as exc:
        pytest.skip(f"pretrained fmnist_resnet weights not available: {exc}")
    try:
        images, labels = load_fashion_mnist("test")
    except (FileNotFoundError, ValueError, OSError) as exc:
        pytest.skip(f"Fashion-MNIST test split not available: {exc}")
    return model.eval(), normalize_fashion_mnist(images), labels


def _accuracy(model, x, y, batch=1000):
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    return 100.0 * correct / x.shape[0]


@pytest.mark.slow
def test_fmnist_naive_w8a8_close_to_fp():
    model, x, y = _fmnist()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    calib = x[:256].split(64)  # test-split images only: no training data needed
    qmodel = naive_ptq(model, calib, 8, 8, progress=False)
    fp, q8 = _accuracy(model, x, y), _accuracy(qmodel, x, y)
    assert fp > 80.0, fp
    assert abs(fp - q8) <= 0.5, (fp, q8)
