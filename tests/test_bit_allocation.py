"""Per-layer bit allocation: the exact solver, sensitivities, plans, and mixed int8/int4 execution."""
import itertools
import random

import pytest
import torch
from torch import nn

from _support.runtime import compare, healthy
from zsq_engine.models import get_model
from zsq_engine.quant import calibrate_activations, quantize_model
from zsq_engine.quant.bit_allocation import (LayerCost, Option, allocate, apply_bit_plan, average_bits, layer_costs,
                                             layer_sensitivity, plan_bits)
from zsq_engine.runtime import convert


def _brute_force(options, budget):
    best = None
    for combo in itertools.product(*[range(len(o)) for o in options]):
        r = sum(options[i][j].resource for i, j in enumerate(combo))
        c = sum(options[i][j].cost for i, j in enumerate(combo))
        if r <= budget and (best is None or c < best[0]):
            best = (c, r, combo)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_allocate_matches_brute_force(seed):
    rng = random.Random(seed)
    layers = rng.randint(2, 6)
    options = [[Option(rng.randint(1, 40) * b, rng.random() * 10 / b, (i, b)) for b in (2, 4, 8)]
               for i in range(layers)]
    lo = sum(min(o.resource for o in opts) for opts in options)
    hi = sum(max(o.resource for o in opts) for opts in options)
    for budget in (lo, (lo + hi) / 3, (lo + hi) / 2, hi):
        choices, cost, resource = allocate(options, budget)
        best = _brute_force(options, budget)
        assert cost == pytest.approx(best[0], rel=1e-12, abs=1e-12)
        assert resource <= budget + 1e-9
        chosen = [next(o for o in options[i] if o.choice == c) for i, c in enumerate(choices)]
        assert sum(o.cost for o in chosen) == pytest.approx(cost) and sum(o.resource for o in chosen) == resource
    with pytest.raises(ValueError, match="budget"):
        allocate(options, lo - 1)


def test_plan_bits_size_budget_by_hand():
    # two layers, 100 and 300 weights; average 5 bits allows 2000 bit-weights in total
    costs = {"a": LayerCost(100, 10, 1000, True), "b": LayerCost(300, 10, 1000, False)}
    sens = {"a": {("w", 4): 5.0, ("w", 8): 0.0},
            "b": {("w", 4): 1.0, ("w", 8): 0.0, ("a", 4): 2.0, ("a", 8): 0.0}}
    plan = plan_bits(sens, costs, 5.0, mode="size")
    # options: a8 b4 = 2000 bits, cost 1; a4 b8 = 2800 > 2000; a4 b4 = 1600, cost 6 -> a8 b4
    assert plan["a"] == (8, None)                 # float input: no activation bits
    assert plan["b"][0] == 4
    assert plan["b"][1] == 4                      # one activation layer, budget 5 bits -> only 4 fits
    plan = plan_bits(sens, costs, 8.0, mode="size")
    assert plan == {"a": (8, None), "b": (8, 8)}
    with pytest.raises(ValueError, match="mode"):
        plan_bits(sens, costs, 5.0, mode="energy")
    with pytest.raises(ValueError, match="budget_bits"):
        plan_bits(sens, costs, -1.0)


def test_plan_bits_bops_budget_by_hand():
    costs = {"a": LayerCost(100, 10, 1000, False), "b": LayerCost(100, 10, 3000, False)}
    sens = {n: {("w", 4): 1.0, ("w", 8): 0.0, ("a", 4): 1.0, ("a", 8): 0.0} for n in costs}
    # budget B = 6 bits: 36 * 4000 = 144000 BOPs. b at W8A8 costs 192000: too much; a at W8A8
    # (64000) + b at W4A8 or W8A4 (96000) = 160000: too much; a W8A8 + b W4A4 = 112000, cost 2;
    # a W4A8 + b W8A4 = 32000 + 96000 = 128000, cost 2; the minimum cost is 2 either way
    plan = plan_bits(sens, costs, 6.0, mode="bops")
    bops = sum(costs[n].macs * w * a for n, (w, a) in plan.items())
    assert bops <= 144000
    assert sum(sens[n][("w", w)] + sens[n][("a", a)] for n, (w, a) in plan.items()) == 2.0


def _small_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    return healthy(net, (3, 10, 10))


@torch.no_grad()
def test_layer_sensitivity_is_a_kl_that_shrinks_with_bits():
    net = _small_net()
    images = torch.randn(48, 3, 10, 10)
    sens = layer_sensitivity(net, images, weight_bits=(2, 8), act_bits=(2, 8), batch_size=32)
    assert set(sens) == {"0", "3", "6", "11"}
    assert ("a", 2) not in sens["0"]             # the image input stays float
    for name, table in sens.items():
        assert all(v >= -1e-12 for v in table.values())
        assert table[("w", 2)] > table[("w", 8)]
        if ("a", 2) in table:
            assert table[("a", 2)] > table[("a", 8)]


@torch.no_grad()
def test_mixed_int8_int4_model_runs_on_the_integer_runtime():
    net = _small_net()
    images = torch.randn(32, 3, 10, 10)
    q = quantize_model(net, 8, 8, first_last_bits=None)
    apply_bit_plan(q, {"3": (4, 4), "6": (4, 8), "11": (8, 4)})
    calibrate_activations(q, [images], progress=False)
    assert [(n, l.weight_bits, l.act_bits) for n, l in [("3", q[3]), ("6", q[6]), ("11", q[11])]] == \
        [("3", 4, 4), ("6", 4, 8), ("11", 8, 4)]
    im = convert(q)
    cfg = {m.config["name"]: m.config for m in im.layers.values()}
    assert cfg["3"]["packed"] and cfg["6"]["packed"] and not cfg["11"]["packed"] and not cfg["0"]["packed"]
    assert cfg["3"]["input"]["qmax"] == 15 and cfg["6"]["input"]["qmax"] == 255
    compare(q, im, torch.randn(4, 3, 10, 10))
    costs = layer_costs(q, images)
    assert costs["3"] == LayerCost(16 * 8 * 9, 8 * 10 * 10, 16 * 5 * 5 * 8 * 9, False)
    avg = average_bits(q, costs)
    total = sum(c.params for c in costs.values())
    expected = (costs["0"].params * 8 + costs["3"].params * 4 + costs["6"].params * 4 + costs["11"].params * 8)
    assert avg["weight"] == pytest.approx(expected / total)
    with pytest.raises(ValueError, match="not quantized layers"):
        apply_bit_plan(q, {"nope": (4, 4)})


@pytest.mark.slow
def test_fmnist_plan_meets_its_budget():
    model = get_model("fmnist_resnet", pretrained=True).eval()
    images = torch.randn(16, 1, 28, 28)
    sens = layer_sensitivity(model, images, weight_bits=(2, 4, 8), act_bits=(4, 8), weight_method="minmax")
    ref = quantize_model(model, 4, 4, weight_method="minmax")
    costs = layer_costs(ref, images)
    target = average_bits(ref, costs)
    plan = plan_bits(sens, costs, target["weight"], mode="size")
    q = quantize_model(model, 8, 8, first_last_bits=None, weight_method="minmax")
    apply_bit_plan(q, plan, weight_method="minmax")
    got = average_bits(q, costs)
    assert got["weight"] <= target["weight"] + 1e-9
    assert got["act"] <= target["weight"] + 1e-9
    assert len({w for w, _ in plan.values()}) > 1          # really mixed


@pytest.mark.slow
def test_cli_quantize_with_equalize_and_bits_budget_round_trips(tmp_path, capsys):
    from zsq_engine.cli import main
    from zsq_engine.quant import list_quant_layers
    from zsq_engine.recon import load_quantized

    synth = tmp_path / "synth.pt"
    torch.save({"images": torch.randn(8, 1, 28, 28), "labels": None,
                "meta": {"model": "fmnist_resnet", "method": "genie", "seed": 0, "preset": "fast", "num": 8}}, synth)
    out = tmp_path / "q.pt"
    rc = main(["quantize", "--data", str(synth), "--equalize", "--bits-budget", "5", "--iters", "2", "--num", "8",
               "--eval-limit", "256", "--no-progress", "--device", "cpu", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "per-layer bits for an average of 5" in text, text
    assert "--equalize: 3 of 3 conv pairs equalised\n" in text   # conv1 -> conv2 of each block, no ReLU6
    qmodel, meta = load_quantized(out)
    assert meta["equalize"] == "dfq" and meta["bits_budget"] == 5.0
    bits = {r.name: (r.weight_bits, r.act_bits) for r in list_quant_layers(qmodel)}
    assert bits == {n: tuple(v) for n, v in meta["layer_bits"].items()}
    costs = layer_costs(qmodel, torch.randn(1, 1, 28, 28))
    assert average_bits(qmodel, costs)["weight"] <= 5.0 + 1e-9
    rc = main(["quantize", "--data", str(synth), "--bits-budget", "0", "--out", str(tmp_path / "x.pt"),
               "--no-progress", "--device", "cpu"])
    assert rc == 2 and "--bits-budget" in capsys.readouterr().err


def test_cli_qat_bits_budget_needs_images_to_rank_the_layers(tmp_path, capsys, monkeypatch):
    from zsq_engine.cli import main

    monkeypatch.setattr("zsq_engine.commands.quantize.check_eval_data", lambda *a, **k: None)
    base = ["qat", "--method", "gdfq", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "q.pt")]
    assert main(base + ["--bits-budget", "5"]) == 2
    assert "--plan-data" in capsys.readouterr().err
    assert main(base + ["--bits-budget", "-1"]) == 2
    assert "--bits-budget" in capsys.readouterr().err
    assert main(base + ["--plan-data", str(tmp_path / "s.pt")]) == 2
    assert "without --bits-budget" in capsys.readouterr().err
    assert not (tmp_path / "q.pt").exists()


@pytest.mark.slow
def test_cli_qat_bits_budget_plan_reaches_training(tmp_path, capsys, monkeypatch):
    import zsq_engine.qat
    from zsq_engine.cli import main

    seen = {}

    def stop(*args, **kw):
        seen.update(kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(zsq_engine.qat, "train_qat", stop)
    monkeypatch.setattr("zsq_engine.commands.quantize.check_eval_data", lambda *a, **k: None)
    synth = tmp_path / "synth.pt"
    torch.save({"images": torch.randn(8, 1, 28, 28), "labels": None,
                "meta": {"model": "fmnist_resnet", "method": "genie", "seed": 0, "preset": "fast", "num": 8}}, synth)
    rc = main(["qat", "--method", "gdfq", "--no-progress", "--no-start-eval", "--device", "cpu",
               "--bits-budget", "5", "--plan-data", str(synth), "--out", str(tmp_path / "q.pt")])
    assert rc == 130
    assert "per-layer bits for an average of 5" in capsys.readouterr().out
    plan = seen["layer_bits"]
    model = get_model("fmnist_resnet", pretrained=True).eval()
    q = quantize_model(model, 4, 4)
    apply_bit_plan(q, plan)
    assert average_bits(q, layer_costs(q, torch.randn(1, 1, 28, 28)))["weight"] <= 5.0 + 1e-9
    assert len({w for w, _ in plan.values()}) > 1
