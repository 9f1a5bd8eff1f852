"""High-bias absorption skips second layers that see zero padding (synth_free.absorb)."""
import torch
from torch import nn

from zsq_engine.synth_free import absorb_high_bias, find_equalization_pairs
from zsq_engine.synth_free.absorb import absorbable_shift


class PadChain(nn.Module):
    """conv1 (1x1) -> BN -> ReLU -> [ZeroPad2d] -> conv2 (3x3)."""

    def __init__(self, own_padding: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.act = nn.ReLU()
        self.pad = nn.Identity() if own_padding else nn.ZeroPad2d(1)
        self.conv2 = nn.Conv2d(2, 1, 3, padding=1 if own_padding else 0, bias=False)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1))
            self.bn.weight.copy_(torch.tensor([1.0, 0.5]))
            self.bn.bias.copy_(torch.tensor([5.0, 1.0]))          # c = (2, 0)
            self.bn.running_var.fill_(1.0 - 1e-5)
            self.conv2.weight.fill_(1.0)

    def forward(self, x):
        return self.conv2(self.pad(self.act(self.bn(self.conv1(x)))))


@torch.no_grad()
def test_absorption_skips_zero_padded_second_layers_and_stays_exact():
    x = torch.rand(3, 1, 4, 4) * 3 - 1                         # channel 0 stays above c everywhere
    for own in (True, False):
        m = PadChain(own).eval()
        ref = m(x)
        pairs = find_equalization_pairs(m)
        assert len(pairs) == 1 and pairs[0].zero_pad == (not own)
        assert absorb_high_bias(m, pairs) == {}                    # skipped: borders would change
        torch.testing.assert_close(m(x), ref)
        # the paper's choice absorbs anyway: exact inside, off by W2 c on the border outputs
        done = absorb_high_bias(m, pairs, padded=True)
        torch.testing.assert_close(done["conv1"], absorbable_shift(torch.tensor([5.0, 1.0]), torch.tensor([1.0, 0.5])).double())
        diff = (m(x) - ref).abs()[:, 0]
        assert float(diff[:, 1:-1, 1:-1].max()) < 1e-4
        # a corner output misses 5 of its 9 taps of c = 2 (shifted model: -2 each) -> off by 10
        torch.testing.assert_close(diff[:, 0, 0], torch.full((3,), 10.0))
