"""SQuant rounding (zsq_engine.quant.squant) and AdaRound's SQuant initialisation."""
import itertools

import pytest
import torch
from torch import nn

from zsq_engine.quant import QuantSpec, UniformQuantizer, quantize_model
from zsq_engine.quant.calibration import calibrate_weight
from zsq_engine.quant.squant import apply_squant, squant_codes, squant_round
from zsq_engine.recon.quantizers import AdaRoundWeightQuantizer


def _best_rounding(x: torch.Tensor, bound: float = 0.5):
    """Brute force: the floor/ceil choice with the least sum of squared errors whose summed
    error is within ``bound`` (None when no choice is)."""
    x = x.double().flatten()
    lo = torch.floor(x)
    best, best_cost = None, float("inf")
    for bits in itertools.product((0.0, 1.0), repeat=x.numel()):
        q = lo + torch.tensor(bits, dtype=torch.float64)
        e = q - x
        if abs(float(e.sum())) <= bound and float((e ** 2).sum()) < best_cost:
            best, best_cost = q, float((e ** 2).sum())
    return best


def test_kernel_flips_by_hand():
    # errors of round-to-nearest: (-.45, -.4, -.35, -.1), sum -1.3 -> one flip up, the largest |e|
    x = torch.tensor([0.45, 0.4, 0.35, 0.1]).reshape(1, 1, 2, 2)
    codes = squant_round(x, 0, 15, kernel=True, channel=False)
    assert codes.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    assert squant_round(x, 0, 15, kernel=False, channel=False).flatten().tolist() == [0.0] * 4


@pytest.mark.parametrize("seed", range(6))
def test_kernel_step_is_the_best_rounding_within_half(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, 2, 4, generator=g) * 6 + 1          # 8 elements: 256 roundings
    codes = squant_round(x, 0, 15, kernel=True, channel=False)
    torch.testing.assert_close(codes.double().flatten(), _best_rounding(x))


@pytest.mark.parametrize("seed", range(4))
def test_channel_step_on_one_element_kernels_is_the_best_rounding(seed):
    # linear weights [O, I]: no kernel step, the channel step ranks the elements themselves
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 7, generator=g) * 10 + 2
    codes = squant_round(x, 0, 15)
    for o in range(3):
        torch.testing.assert_close(codes[o].double(), _best_rounding(x[o]))


@pytest.mark.parametrize("shape", [(6, 5, 3, 3), (4, 1, 5, 5), (3, 7, 1, 3), (2, 9)])
def test_squant_invariants(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(*shape, generator=g) * 15
    x[0].flatten()[:3] = torch.tensor([15.0, 0.0, 14.9])      # values at / near the grid ends
    xd = x.double()
    per_kernel = x[0, 0].numel() if x.dim() > 2 else 1
    near = squant_round(x, 0, 15, kernel=False, channel=False)
    assert torch.equal(near, torch.round(x))
    k_only = squant_round(x, 0, 15, channel=False).double()
    both = squant_round(x, 0, 15).double()
    for codes in (k_only, both):
        assert codes.min() >= 0 and codes.max() <= 15 and torch.equal(codes, codes.round())
        assert ((codes - xd).abs() < 1).all()                 # only floor or ceil
    kernels = lambda c: (c - xd).reshape(-1, per_kernel).sum(1)  # noqa: E731
    channels = lambda c: (c - xd).reshape(shape[0], -1).sum(1)   # noqa: E731
    if per_kernel > 1:
        assert (kernels(k_only).abs() <= 0.5 + 1e-9).all()
        # the channel step moves each kernel by at most one element, keeping its sum within 1
        moved = (both != k_only).reshape(-1, per_kernel).sum(1)
        assert moved.max() <= 1
        assert (kernels(both).abs() <= 1 + 1e-9).all()
    assert (channels(both).abs() <= 0.5 + 1e-9).all()
    # SQuant never makes the summed error worse than round-to-nearest at the channel level
    assert (channels(both).abs() <= channels(near.double()).abs() + 1e-9).all()


def test_apply_squant_writes_weights_its_quantizer_reproduces():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 5))
    q = quantize_model(model, 4, 8, first_last_bits=None, weight_method="minmax").eval()
    expected = {n: squant_codes(m.weight, m.weight_quantizer)[0] for n, m in q.named_modules()
                if hasattr(m, "weight_quantizer")}
    changed = apply_squant(q)
    assert set(changed) == set(expected) and sum(changed.values()) > 0
    for name, codes in expected.items():
        layer = q.get_submodule(name)
        s, z = layer.weight_quantizer.qparams()
        view = (-1,) + (1,) * (layer.weight.dim() - 1)
        torch.testing.assert_close(layer.weight, ((codes - z.view(view)) * s.view(view)).float())
        assert torch.equal(layer.weight_quantizer(layer.weight), layer.weight)


def test_squant_codes_rejects_other_axes():
    q = UniformQuantizer(QuantSpec(bits=4, per_channel=True, axis=1), num_channels=3)
    w = torch.randn(2, 3, 3, 3)
    calibrate_weight(q, w, "minmax")
    with pytest.raises(ValueError, match="axis"):
        squant_codes(w, q)


def test_adaround_starts_from_the_squant_rounding_and_can_still_learn():
    torch.manual_seed(1)
    w = torch.randn(6, 4, 3, 3)
    q = UniformQuantizer(QuantSpec(bits=3, per_channel=True), num_channels=6)
    calibrate_weight(q, w, "minmax")
    codes, s, z = squant_codes(w, q)
    target = (codes - z.view(-1, 1, 1, 1)) * s.view(-1, 1, 1, 1)
    ada = AdaRoundWeightQuantizer(w, q, rounding_init="squant")
    soft = ada(w)
    torch.testing.assert_close(soft.double(), target.double(), atol=1e-5, rtol=0)
    soft.sum().backward()
    assert ada.alpha.grad is not None and ada.alpha.grad.abs().sum() > 0
    ada.hard = True
    torch.testing.assert_close(ada(w).double(), target.double(), atol=1e-6, rtol=0)
    nearest = AdaRoundWeightQuantizer(w, q)
    nearest.hard = True
    assert not torch.equal(nearest(w), ada(w))               # SQuant did flip some roundings
    with pytest.raises(ValueError, match="rounding_init"):
        AdaRoundWeightQuantizer(w, q, rounding_init="random")


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def test_accuracy_rows_squant_is_quantize_squant_then_calibrate():
    from zsq_engine.commands.accuracy import accuracy_rows
    from zsq_engine.evaluation import evaluate_topk
    from zsq_engine.quant import calibrate_activations

    model = _tiny_net()
    g = torch.Generator().manual_seed(1)
    calib = [(torch.randn(16, 1, 8, 8, generator=g), torch.zeros(16, dtype=torch.int64))]
    test = [(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 4, (64,), generator=g))]
    rows = accuracy_rows(model, [(3, 8)], calib, test, torch.device("cpu"), show_progress=False,
                         weight_rounding="squant")
    assert [r["method"] for r in rows] == ["FP32", "naive PTQ + SQuant"]
    q = quantize_model(model, 3, 8)
    assert sum(apply_squant(q).values()) > 0  # the rounding really changes at 3 bits
    calibrate_activations(q, calib, progress=False)
    expected = evaluate_topk(q, test, "cpu", ks=(1, 5), show_progress=False)
    assert rows[1]["accuracy"] == pytest.approx(expected[1]) and rows[1]["top5"] == pytest.approx(expected[5])
    with pytest.raises(ValueError, match="weight_rounding"):
        accuracy_rows(model, [(3, 8)], calib, test, torch.device("cpu"), show_progress=False, weight_rounding="up")


@pytest.mark.slow
def test_cli_rounding_flags(tmp_path, capsys):
    from zsq_engine.cli import build_parser, main
    from zsq_engine.recon import load_quantized

    assert build_parser().parse_args(["eval", "--weight-rounding", "squant"]).weight_rounding == "squant"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--weight-rounding", "stochastic"])
    assert exc.value.code == 2
    assert "--weight-rounding" in capsys.readouterr().err
    synth = tmp_path / "synth.pt"
    torch.save({"images": torch.randn(8, 1, 28, 28), "labels": None,
                "meta": {"model": "fmnist_resnet", "method": "genie", "seed": 0, "preset": "fast", "num": 8}}, synth)
    out = tmp_path / "q.pt"
    rc = main(["quantize", "--data", str(synth), "--rounding-init", "squant", "--iters", "1", "--num", "8",
               "--eval-limit", "1", "--no-progress", "--device", "cpu", "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    _, meta = load_quantized(out)
    assert meta["config"]["rounding_init"] == "squant"
