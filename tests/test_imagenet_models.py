"""The pipeline on the ImageNet architectures with random weights, at 32x32 on a WordNet-id folder.

* ResNet (BasicBlock stages with a downsample) and MobileNetV2 (InvertedResidual) built from the
  registered definitions at reduced depth / width, as a user's module:factory: synthesize ->
  quantize (Genie-M) -> convert --check --val-dir -> eval of the integer file.
* The full registered mobilenet_v2 with a user checkpoint (--weights): naive PTQ, conversion and
  the check on --val-dir. (The full ResNet-18 spends ~20 s in the weight-range search alone on
  this CPU, so it is left to the user-model variant above.)
"""
from __future__ import annotations

import pytest
import torch

from _support.data import SHARK, TENCH, write_folder
from _support.user_modules import install_module
from zsq_engine.cli import main
from zsq_engine.models import get_model

pytestmark = pytest.mark.slow  # whole pipelines (synthesize, quantize, convert) on ImageNet architectures

SMALL_ARCHS = '''
import torch
from torch import nn
from zsq_engine.models.mobilenetv2 import MobileNetV2
from zsq_engine.models.resnet import BasicBlock, make_stage

INPUT_SHAPE = (3, 32, 32)


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_stage(BasicBlock, 16, 16, 1, 1)
        self.layer2 = make_stage(BasicBlock, 16, 32, 1, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 1000)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _bn_stats(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def small_resnet():
    torch.manual_seed(0)
    return _bn_stats(SmallResNet())


def small_mobilenet_v2():
    torch.manual_seed(0)
    return _bn_stats(MobileNetV2(width_mult=0.25, inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2]]))
'''


@pytest.fixture
def archs(tmp_path, monkeypatch):
    return install_module(tmp_path, monkeypatch, "zsq_small_archs", SMALL_ARCHS)


@pytest.mark.parametrize("factory", ["small_resnet", "small_mobilenet_v2"])
def test_pipeline_on_imagenet_architectures(factory, archs, tmp_path, capsys):
    val = write_folder(tmp_path / "val", [TENCH, SHARK], per_class=2, size=(40, 48))
    model = ["--model", f"{archs}:{factory}"]
    common = ["--no-progress", "--device", "cpu"]
    assert main(["synthesize", *model, "--method", "genie", "--num", "4", "--batch-size", "4", "--iters", "1",
                 "--preset", "fast", "--out", str(tmp_path / "syn.pt")] + common) == 0
    assert main(["quantize", *model, "--data", str(tmp_path / "syn.pt"), "--wbits", "4", "--abits", "8",
                 "--iters", "2", "--num", "4", "--val-dir", str(val), "--out", str(tmp_path / "q.pt")] + common) == 0
    meta = torch.load(tmp_path / "q.pt", weights_only=True)["meta"]
    block = "BasicBlock" if factory == "small_resnet" else "InvertedResidual"
    assert any(u["type"] == block for u in meta["units_report"]), meta["units_report"]
    assert 0 <= meta["accuracy"] <= meta["top5"] <= 100
    assert main(["convert", "--checkpoint", str(tmp_path / "q.pt"), "--check", "--val-dir", str(val),
                 "--out", str(tmp_path / "int.pt")] + common) == 0
    out = capsys.readouterr().out
    assert "check on 4 images" in out and "top-1 agreement" in out
    assert main(["eval", "--int-model", str(tmp_path / "int.pt"), "--val-dir", str(val)] + common) == 0
    assert "integer model" in capsys.readouterr().out


def test_registered_mobilenet_v2_with_user_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "mobilenet_v2.pt"
    torch.save(get_model("mobilenet_v2").state_dict(), weights)  # stands for a torchvision checkpoint
    val = write_folder(tmp_path / "val", [TENCH, SHARK], per_class=2, size=(40, 48))
    assert main(["convert", "--model", "mobilenet_v2", "--weights", str(weights), "--input-size", "32",
                 "--wbits", "4", "--abits", "8", "--calib-dir", str(val), "--calib-images", "4", "--check",
                 "--val-dir", str(val), "--out", str(tmp_path / "int.pt"), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "check on 4 images" in out and "top-1 agreement" in out
