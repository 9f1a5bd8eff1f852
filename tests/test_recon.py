"""Block reconstruction (zsq_engine.recon): partition, quantizers, per-unit optimisation, CLI errors.

Tiny iteration counts keep the file well under a minute and a half on two busy CPU cores.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zsq_engine import ops
from zsq_engine.models.efficientnet_lite import MBConvBlock
from zsq_engine.models.mobilenetv2 import InvertedResidual
from zsq_engine.models.resnet import BasicBlock, make_downsample
from zsq_engine.quant import calibrate_activations, fold_model_bn, quantize_model
from zsq_engine.quant.modules import QuantLayer
from zsq_engine.recon import (AdaRoundWeightQuantizer, LSQActQuantizer, make_config, partition, reconstruct_model,
                              reconstruct_unit, unit_mse)


def _randomize_bn(module: nn.Module, gen: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)


def _blocks():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    basic = BasicBlock(8, 16, stride=2, downsample=make_downsample(8, 16, 2))
    inv = InvertedResidual(8, 8, stride=1, expand_ratio=4)
    mb = MBConvBlock(8, 12, kernel_size=3, stride=1, expand_ratio=3)
    for b in (basic, inv, mb):
        _randomize_bn(b, g)
        b.eval()
    # BasicBlock inputs follow a ReLU; MobileNet-style block inputs are signed
    return [("BasicBlock", basic, torch.relu(torch.randn(96, 8, 8, 8, generator=g))),
            ("InvertedResidual", inv, torch.randn(96, 8, 8, 8, generator=g)),
            ("MBConvBlock", mb, torch.randn(96, 8, 8, 8, generator=g))]


def test_a_unit_that_ends_worse_keeps_its_calibrated_start():
    """An activation-step learning rate far too large for 8 bits drives the unit's loss up: the
    unit then keeps its calibrated start bit for bit, and the report says so."""
    name, block, x = _blocks()[0]
    fp = fold_model_bn(copy.deepcopy(block)).eval()
    with torch.no_grad():
        y = fp(x)
    q = quantize_model(block, 8, 8, first_last_bits=None, quantize_first_input=True).eval()
    calibrate_activations(q, [x], progress=False)
    start = {k: v.clone() for k, v in q.state_dict().items()}
    naive = unit_mse(q, x, y)
    cfg = make_config("genie", "fast", iters=4, batch_size=32, log_every=1000, lr_act_scale=10.0)
    info = reconstruct_unit(q, x, y, x, cfg, seed=1, desc=name, show_progress=False)
    assert info["kept"] == "start"
    assert info["mse_after"] == info["mse_before"] == pytest.approx(naive, rel=1e-6)
    assert all(torch.equal(v, start[k]) for k, v in q.state_dict().items())
    assert all(type(m).__name__ not in ("AdaRoundWeightQuantizer", "LSQActQuantizer") for m in q.modules())


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1, 2], ids=["BasicBlock", "InvertedResidual", "MBConvBlock"])
def test_reconstruction_lowers_block_mse(index):
    name, block, x = _blocks()[index]
    fp = fold_model_bn(copy.deepcopy(block)).eval()
    with torch.no_grad():
        y = fp(x)
    q = quantize_model(block, 3, 4, first_last_bits=None, quantize_first_input=True).eval()
    calibrate_activations(q, [x], progress=False)
    naive = unit_mse(q, x, y)
    cfg = make_config("genie", "fast", iters=150, batch_size=32, log_every=1000)
    info = reconstruct_unit(q, x, y, x, cfg, seed=1, desc=name, show_progress=False)
    after = unit_mse(q, x, y)
    assert info["mse_before"] == pytest.approx(naive, rel=1e-5)
    assert after == pytest.approx(info["mse_after"], rel=1e-5)
    assert after < 0.97 * naive, f"{name}: reconstruction {after:.4g} vs naive {naive:.4g}"
    assert info["kept"] == "reconstructed"
    # every layer was baked back: plain quantizers, weights exactly on their grid
    for m in q.modules():
        if isinstance(m, QuantLayer):
            assert type(m.weight_quantizer).__name__ == "UniformQuantizer"
            assert torch.equal(m.weight_quantizer(m.weight), m.weight)


@pytest.mark.parametrize("learn_scale", [False, True], ids=["brecq", "genie"])
def test_hard_weights_are_on_the_integer_grid(learn_scale):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3)
    q = quantize_model(nn.Sequential(conv), 3, 8, first_last_bits=None).eval()
    layer = q[0]
    wq = AdaRoundWeightQuantizer(layer.weight, layer.weight_quantizer, learn_scale=learn_scale,
                                 search_scale=learn_scale)
    with torch.no_grad():
        wq.alpha.add_(torch.randn_like(wq.alpha))
        if learn_scale:
            wq.scale.mul_(1.1)
    wq.hard = True
    w = wq(layer.weight)
    codes = wq.integer_weight()
    assert codes.min() >= wq.quant_min and codes.max() <= wq.quant_max
    s = wq.scale.detach().reshape(-1, 1, 1, 1)
    z = wq.zero_point.reshape(-1, 1, 1, 1)
    assert torch.equal(w, (codes.float() - z) * s)
    # soft mode differs from hard only by less than one step
    wq.hard = False
    assert ((wq(layer.weight) - w).abs() <= s + 1e-6).all()


def test_act_quantizer_draws_a_new_mask_each_step():
    from zsq_engine.quant import QuantSpec, UniformQuantizer

    t = UniformQuantizer(QuantSpec(bits=4)).set_qparams(torch.tensor([0.1]), torch.tensor([0.0]))
    aq = LSQActQuantizer(t, drop_prob=0.5, seed=3)
    aq.dropping = True
    x = torch.rand(4096) * 1.3 + 0.01
    a = aq(x)
    aq.step()
    b = aq(x)
    qa, qb = a != x, b != x
    assert 0.35 < qa.float().mean() < 0.65
    assert not torch.equal(qa, qb)
    aq.dropping = False
    assert torch.equal(aq(x), ops.fake_quant(x, torch.tensor([0.1]), torch.tensor([0.0]), 0, 15))


def test_partition_resnet_and_user_units():
    from zsq_engine.models import get_model

    q = quantize_model(get_model("fmnist_resnet"), 4, 4)
    units = partition(q)
    assert [u.name for u in units] == ["conv1", "layer1.0", "layer2.0", "layer3.0", "fc"]
    assert [u.kind for u in units] == ["layer", "block", "block", "block", "layer"]
    units = partition(q, ["layer2"])
    assert "layer2" in [u.name for u in units] and "layer2.0" not in [u.name for u in units]
    with pytest.raises(ValueError, match="overlap"):
        partition(q, ["layer2", "layer2.0"])
    with pytest.raises(ValueError, match="not a submodule"):
        partition(q, ["nope"])


def test_partition_mobilenet_v2():
    from zsq_engine.models import get_model

    q = quantize_model(get_model("mobilenet_v2"), 4, 4, weight_method="minmax")
    units = partition(q)
    assert units[0].name == "features.0.0" and units[-1].name == "classifier.1"
    assert sum(u.type_name == "InvertedResidual" for u in units) == 17


@pytest.fixture(scope="module")
def fmnist():
    pytest.importorskip("zsq_engine.data")
    from zsq_engine.data.sources import fmnist_batches, fmnist_calibration
    from zsq_engine.models import get_model

    try:
        calib = fmnist_calibration(128, None, 0)
        test = list(fmnist_batches("test", 500, None))[:4]  # 2000 images
    except FileNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST not available: {exc}")
    return get_model("fmnist_resnet", pretrained=True), calib, test


@pytest.mark.slow
def test_pipeline_beats_naive_ptq(fmnist):
    from zsq_engine.evaluation import evaluate_accuracy
    from zsq_engine.quant import naive_ptq

    model, calib, test = fmnist
    images = torch.cat([x for x, _ in calib])  # real training images stand in for synthetic data
    naive = evaluate_accuracy(naive_ptq(model, calib, 3, 3, progress=False), test, show_progress=False)
    r = reconstruct_model(model, images, 3, 3, method="genie", preset="fast", iters=60, show_progress=False)
    acc = evaluate_accuracy(r.model, test, show_progress=False)
    assert [u["name"] for u in r.units] == ["conv1", "layer1.0", "layer2.0", "layer3.0", "fc"]
    assert acc > naive + 2.0, f"reconstructed W3A3 {acc:.2f} vs naive {naive:.2f}"


def test_bad_arguments():
    from zsq_engine.models import get_model

    model = get_model("fmnist_resnet")
    x = torch.randn(8, 1, 28, 28)
    with pytest.raises(ValueError, match="wbits"):
        reconstruct_model(model, x, 9, 4)
    with pytest.raises(ValueError, match="abits"):
        reconstruct_model(model, x, 4, 1)
    with pytest.raises(ValueError, match="method"):
        reconstruct_model(model, x, 4, 4, method="adaquant")
    with pytest.raises(ValueError, match="empty"):
        reconstruct_model(model, x[:0], 4, 4)


def _fake_synth_file(path, model_name, images):
    torch.save({"images": images, "labels": None,
                "meta": {"model": model_name, "method": "genie", "seed": 0, "preset": "fast", "num": images.shape[0]}},
               path)


def test_cli_errors(tmp_path, capsys):
    from zsq_engine.cli import main

    other = tmp_path / "other.pt"
    _fake_synth_file(other, "resnet18", torch.randn(4, 3, 224, 224))
    empty = tmp_path / "empty.pt"
    _fake_synth_file(empty, "fmnist_resnet", torch.empty(0, 1, 28, 28))
    out = str(tmp_path / "q.pt")
    cases = [(["--data", "real", "--wbits", "9"], "wbits", 2),  # 2: a wrong command line, 1: a bad file
             (["--data", "real", "--abits", "1"], "abits", 2),
             (["--data", str(other)], "resnet18", 1),
             (["--data", str(empty)], "no images", 1),
             (["--data", str(tmp_path / "missing.pt")], "does not exist", 1)]
    for extra, needle, code in cases:
        rc = main(["quantize", "--out", out, "--no-progress", "--device", "cpu", *extra])
        err = capsys.readouterr().err
        assert rc == code and needle in err, (extra, err)
