"""DFQ's exact ReLU6 policy (synth_free.ChannelClamp) in the integer runtime and in saved files
(zsq_engine/runtime/channel_clamp.py)."""
import torch
from torch import nn

from _support.runtime import compare
from zsq_engine.models import get_model
from zsq_engine.models.efficientnet_lite import BlockArgs, EfficientNetLite
from zsq_engine.quant import calibrate_activations, naive_ptq, quantize_model
from zsq_engine.recon.io import load_quantized, save_quantized
from zsq_engine.runtime import convert
from zsq_engine.runtime.channel_clamp import clamp_step, compile_clamp_step
from zsq_engine.runtime.io import load, save
from zsq_engine.runtime.qparams import ActQParams
from zsq_engine.synth_free import ChannelClamp, dfq


def _randomise_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            c = mod.num_features
            # per-channel scales over decades (what equalisation is for) and betas that hit the clip at 6
            mod.weight.data = torch.exp(torch.randn(c, generator=g) * 1.5)
            mod.bias.data = torch.randn(c, generator=g) * 3
            mod.running_mean.data = torch.randn(c, generator=g) * 0.3
            mod.running_var.data = torch.rand(c, generator=g) + 0.5
    return model.eval()


def _dfq_clamp_model(wbits=8, abits=8):
    torch.manual_seed(0)
    blocks = (BlockArgs(1, 3, 1, 1, 16, 8), BlockArgs(1, 5, 2, 6, 8, 16), BlockArgs(1, 3, 1, 6, 16, 16))
    fp = _randomise_bn(EfficientNetLite(blocks, num_classes=10, stem_channels=16, head_channels=32), 3)
    eq = dfq(fp, relu6="clamp")
    clamps = [m for m in eq.modules() if isinstance(m, ChannelClamp)]
    assert clamps and all(float(c.upper.min()) != float(c.upper.max()) for c in clamps)
    # naive_ptq snaps biases onto the accumulator grid, as the integer runtime adds them
    return naive_ptq(eq, [torch.randn(4, 3, 32, 32) for _ in range(2)], wbits, abits, progress=False,
                     weight_method="minmax").eval()


def test_clamp_step_bounds_by_hand():
    q = ActQParams(scale=0.25, zero_point=2, qmin=0, qmax=15)
    # Q(u) = clamp(round(u / 0.25) + 2, 0, 15): 0.3 -> 1 + 2, 1.0 -> 4 + 2, 9.0 -> 36 + 2 -> 15
    s = clamp_step("a", "b", torch.tensor([0.3, 1.0, 9.0]), q)
    assert s == {"op": "chclamp", "in": "a", "out": "b", "upper": [3, 6, 15]}
    codes = torch.tensor([[[[5, 5, 5], [2, 9, 15]]]], dtype=torch.uint8)       # NHWC, 3 channels
    out = compile_clamp_step(s)({"a": codes})
    assert out.tolist() == [[[[3, 5, 5], [2, 6, 15]]]] and out.dtype == torch.uint8
    f = clamp_step("a", "b", torch.tensor([0.5, 2.0]), "F")
    x = torch.tensor([[1.0, 1.0], [0.25, 3.0]]).reshape(1, 2, 2, 1)          # NCHW
    assert compile_clamp_step(f)({"a": x}).flatten().tolist() == [0.5, 0.5, 0.25, 2.0]


def test_dfq_clamp_model_converts_and_matches_fake_quant():
    q = _dfq_clamp_model(8, 8)
    im = convert(q)
    steps = [s for s in im.program if s["op"] == "chclamp"]
    assert len(steps) == sum(isinstance(m, ChannelClamp) for m in q.modules())
    x = torch.randn(6, 3, 32, 32) * 2
    compare(q, im, x)  # codes equal up to rare float-summation ties (1 of ~10^5 here), logits explained
    assert torch.equal(im(x).argmax(1), q(x).argmax(1))
    # the clips are active on this input: without the chclamp steps the integer model disagrees
    _, env = im.run(x, keep=True)
    clipped = sum(int((env[s["in"]] > torch.tensor(s["upper"], dtype=env[s["in"]].dtype)
                       .view((1, -1, 1, 1) if env[s["in"]].dtype.is_floating_point else (-1,))).sum())
                  for s in steps)
    assert clipped > 0
    no_clamp = type(im)(dict(im.layers.items()), _without_clamps(im.program), im.input_slot, im.output_slot)
    assert (no_clamp(x) - q(x)).abs().max() > 1e-3


def _without_clamps(program):
    """The program with every chclamp step removed (its readers read its input instead)."""
    alias, out = {}, []
    for s in program:
        if s["op"] == "chclamp":
            alias[s["out"]] = alias.get(s["in"], s["in"])
            continue
        s = dict(s)
        s["in"] = [alias.get(i, i) for i in s["in"]] if isinstance(s["in"], list) else alias.get(s["in"], s["in"])
        if s.get("residual"):
            s["residual"] = alias.get(s["residual"], s["residual"])
        out.append(s)
    return out


def test_dfq_clamp_w4a4_codes_match():
    q = _dfq_clamp_model(4, 4)
    im = convert(q)
    compare(q, im, torch.randn(6, 3, 32, 32) * 2)


def test_integer_file_round_trip(tmp_path):
    q = _dfq_clamp_model(8, 8)
    im = convert(q)
    save(im, tmp_path / "int.pt")
    back = load(tmp_path / "int.pt")
    assert [s for s in back.program if s["op"] == "chclamp"] == [s for s in im.program if s["op"] == "chclamp"]
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(back(x), im(x))


def test_bad_clamp_bounds_in_a_file_are_refused(tmp_path):
    import pytest

    from zsq_engine.utils import FileFormatError

    im = convert(_dfq_clamp_model(8, 8))
    save(im, tmp_path / "int.pt")
    obj = torch.load(tmp_path / "int.pt", weights_only=True)
    step = next(s for s in obj["architecture"]["program"] if s["op"] == "chclamp")
    step["upper"] = [float("nan")] * len(step["upper"])
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(FileFormatError, match="chclamp"):
        load(tmp_path / "bad.pt")


def test_load_quantized_rebuilds_channel_clamps(tmp_path):
    torch.manual_seed(0)
    fp = _randomise_bn(get_model("mobilenet_v2", pretrained=False), 5)
    eq = dfq(fp, relu6="clamp")
    q = quantize_model(eq, 8, 8, weight_method="minmax")
    calibrate_activations(q, [torch.randn(2, 3, 64, 64)], progress=False)
    save_quantized(tmp_path / "q.pt", q, {"model": "mobilenet_v2", "wbits": 8, "abits": 8})
    back, _ = load_quantized(tmp_path / "q.pt")
    names = [n for n, m in q.named_modules() if isinstance(m, ChannelClamp)]
    assert names and names == [n for n, m in back.named_modules() if isinstance(m, ChannelClamp)]
    for n in names:
        assert torch.equal(back.get_submodule(n).upper, q.get_submodule(n).upper)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(back(x), q.eval()(x))
