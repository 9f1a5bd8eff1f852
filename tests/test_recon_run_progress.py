"""The whole-run ETA of a reconstruction weighs each unit by its layers' work (hand-computed)."""
import torch
from torch import nn

from zsq_engine.quant import calibrate_activations, quantize_model
from zsq_engine.recon.run_progress import ELEMENTWISE_WEIGHT, RunProgress, unit_work


class TwoUnits(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())      # 4x8x8 outputs, 27 MACs each
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4),        # depthwise: 9 MACs each
                               nn.Conv2d(4, 2, 1))                             # 2x8x8 outputs, 4 MACs each
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 5)

    def forward(self, x):
        return self.fc(self.pool(self.b(self.a(x))).flatten(1))


def test_unit_work_counts_macs_and_elementwise_per_output():
    e = ELEMENTWISE_WEIGHT
    expected = {"a": 256 * (27 + e), "b": 256 * (9 + e) + 128 * (4 + e), "fc": 5 * (2 + e)}
    model = TwoUnits().eval()
    got = unit_work(model, list(expected), torch.randn(1, 3, 8, 8))
    assert got == expected
    # the fake-quant wrappers (not nn.Conv2d subclasses) weigh the same
    q = quantize_model(model, 8, 8).eval()
    calibrate_activations(q, [torch.randn(4, 3, 8, 8)], progress=False)
    assert unit_work(q, list(expected), torch.randn(1, 3, 8, 8)) == expected


def test_unit_without_weights_gets_the_smallest_weight_and_hooks_are_removed():
    model = TwoUnits().eval()
    got = unit_work(model, ["a", "pool", "fc"], torch.randn(1, 3, 8, 8))
    assert got["pool"] == got["fc"] == min(got.values())
    assert all(not m._forward_hooks for m in model.modules())


def test_run_progress_starts_at_resumed_work_and_advances_by_unit_weight():
    bar = RunProgress({"a": 3.0, "b": 1.0, "c": 6.0}, ["a"], "genie", enabled=True)
    try:
        assert bar.bar.n == 3.0 and bar.bar.total == 10.0
        bar.unit_done("c")
        assert bar.bar.n == 9.0
    finally:
        bar.close()
    off = RunProgress({"a": 1.0}, [], "genie", enabled=False)
    off.unit_done("a")
    assert off.bar is None
