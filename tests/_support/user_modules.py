"""A user's own model module (``package.module:factory``) written into tmp_path for the CLI tests.

``USER_MODULE`` is the module's source; ``user_module`` (a fixture, registered in conftest.py)
writes it under a unique name, puts tmp_path on sys.path and returns the name. ``install_module``
does the same for any source.
"""
import textwrap

import pytest


def install_module(tmp_path, monkeypatch, prefix: str, source: str) -> str:
    """Write ``source`` as ``<prefix>_<n>.py`` in tmp_path, importable for this test; returns its name.

    The name is unique per tmp_path, so a module another test imported is never picked up from
    sys.modules."""
    name = f"{prefix}_{abs(hash(str(tmp_path))) % 10 ** 8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


USER_MODULE = '''
import torch
from torch import nn

INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 4
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyNet(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES, act=None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
                                  act or nn.ReLU())
        self.layer1 = Block(8)  # ResNet stage naming: ZAQ taps its output
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer1(self.stem(x))), 1))


def tiny(num_classes=NUM_CLASSES):
    torch.manual_seed(0)
    model = TinyNet(num_classes)
    for m in model.modules():  # non-trivial BN statistics, as a trained model has
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def tiny_gelu():
    torch.manual_seed(0)
    return TinyNet(act=nn.GELU())


class Shared(nn.Module):
    """Calls one conv twice per forward: not a reconstruction unit."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.twice = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.twice(torch.relu(self.twice(x))))
        return self.fc(x.mean((2, 3)))


def shared():
    torch.manual_seed(0)
    return Shared()


def oracle():
    """Reads the ImageNet index k = 32 a + b an image encodes as red = 8 a, green = 8 b:
    logit_k = sum over (red, a), (green, b) of 2 c r - c^2 (linear in the channel means), which
    is largest for the centre c nearest to each channel's value."""
    k = torch.arange(1000)
    centre = lambda level: (level * 8 / 255.0 - 0.5) / 0.25  # noqa: E731
    ca, cb = centre(k // 32), centre(k % 32)
    fc = nn.Linear(3, 1000)
    with torch.no_grad():
        fc.weight.zero_()
        fc.weight[:, 0], fc.weight[:, 1] = 2 * ca, 2 * cb
        fc.bias.copy_(-ca * ca - cb * cb)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)


oracle.NUM_CLASSES = 1000  # the factory's own attribute wins over the module's constant
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    return install_module(tmp_path, monkeypatch, "zsq_user", USER_MODULE)
