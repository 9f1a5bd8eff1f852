"""ONNX export (zsq_engine.export.to_onnx, zsq export, zsq bench --onnxruntime) checked with a real
engine, ONNX Runtime's CPU provider.

Two oracles, both the fake-quant model itself:
* the graph's function: exported with float biases and run with ONNX Runtime's optimisations OFF,
  every quantized layer's input codes must equal the fake-quant codes (up to ties broken the other
  way by float rounding: a fraction <= 1e-3, as for the integer runtime) and the logits must agree;
* what the engine runs: the default export (int32 biases where it fuses) with all optimisations ON
  must be fused into integer operators (QLinearConv / QGemm in the optimised graph ONNX Runtime
  saves, one per layer the export marked) and agree in top-1 (>= 99.9 %) on 2,000 Fashion-MNIST
  test images. Every QDQ engine adds the bias on the int32 accumulator grid s_x * s_w (ONNX Runtime
  rounds a float bias there itself); naive PTQ keeps the model's biases on that grid
  (quant.snap_biases), so the int32 bias the export writes is the model's bias exactly.
"""
import os

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
rt = pytest.importorskip("onnxruntime")

from _support.data import needs_fmnist  # noqa: E402
from _support.runtime import fq_input_codes, healthy, perturbed_qat_student, ptq  # noqa: E402
from zsq_engine.export import UnsupportedLayerError, to_onnx  # noqa: E402
from zsq_engine.export import ort  # noqa: E402
from zsq_engine.quant import quantize_model  # noqa: E402
from zsq_engine.quant import calibrate_activations  # noqa: E402


def _session(path, optimize: bool):
    so = rt.SessionOptions()
    so.graph_optimization_level = (rt.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else rt.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    return rt.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_codes(path, info, x):
    """(logits, {layer: int64 input codes NHWC / [M, K]}) of the exported graph, unoptimised."""
    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    names = sorted(set(info["input_codes"].values()))
    for name in names:
        q = producer[name]
        while q.op_type != "QuantizeLinear":
            q = producer[q.input[0]]
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, inits[q.input[2]].data_type, None))
    sess = rt.InferenceSession(model.SerializeToString(), _opts(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"input": x.numpy()})
    by_name = dict(zip(names, outs[1:]))
    codes = {}
    for layer, name in info["input_codes"].items():
        c = torch.from_numpy(by_name[name].astype(np.int64))
        codes[layer] = c.permute(0, 2, 3, 1) if c.dim() == 4 else c
    return torch.from_numpy(outs[0]), codes


def _opts():
    so = rt.SessionOptions()
    so.graph_optimization_level = rt.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


def _check_codes(qmodel, path, info, x, max_flip_fraction=1e-3, chaotic=False):
    """Every quantized layer's input codes in the graph vs the fake-quant model's. ``chaotic``: a
    random-weight network amplifies one tie broken the other way into many codes downstream (its
    layers' gains exceed 1), so there only the layers up to the first one with a flipped code are
    compared: all earlier ones exactly, that one within the tie budget."""
    ref, ref_codes = fq_input_codes(qmodel, x)
    out, codes = _ort_codes(path, info, x)
    assert set(codes) == set(ref_codes)
    flips = total = 0
    for name, c in codes.items():  # execution order
        if chaotic and flips:
            break
        r = ref_codes[name]
        if r.dim() == 4 and c.shape != r.shape:
            # zero padding folded into the conv: the graph quantizes the unpadded value (the padded
            # codes are the zero point, DQ(Q(0)) == 0); SAME padding puts the odd pixel last
            dh, dw = r.shape[1] - c.shape[1], r.shape[2] - c.shape[2]
            r = r[:, dh // 2:dh // 2 + c.shape[1], dw // 2:dw // 2 + c.shape[2]]
        assert c.shape == r.shape, name
        flips += int((c != r).sum())
        total += c.numel()
    assert flips <= max_flip_fraction * total, f"{flips} of {total} codes differ"
    return ref, out, flips


def _fused(path, info):
    """The optimised graph's integer operators: one QLinearConv / QGemm per layer the export gave
    an int32 bias (those whose output is read only through quantizers)."""
    ops = ort.optimized_op_counts(path)
    expected = len(info["int_bias_layers"])
    fused = ops.get("QLinearConv", 0) + ops.get("QGemm", 0) + ops.get("QLinearMatMul", 0)
    assert fused == expected > 0, (ops, info["int_bias_layers"])
    return ops


class Tiny(nn.Module):
    """Every exported kind: conv + BN (left unfolded), ReLU, ReLU6, residual add, max / avg pool,
    flatten, linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        y = nn.functional.relu6(self.bn2(self.conv2(x)))
        x = self.pool(torch.relu(self.conv3(y) + x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _tiny(wbits=8, abits=8, **kw):
    torch.manual_seed(0)
    m = healthy(Tiny(), (3, 12, 12))
    with torch.no_grad():  # BN factors of both signs: the sign goes into the codes
        m.bn2.weight[::2] *= -1
    q = quantize_model(m, wbits, abits, fold_bn=False, **kw)
    return calibrate_activations(q, [torch.randn(8, 3, 12, 12) for _ in range(2)], progress=False).eval()


@pytest.mark.parametrize("wbits,abits,symmetric_acts", [(8, 8, False), (4, 4, False), (8, 8, True)])
def test_graph_is_qdq_and_computes_the_fake_quant_model(tmp_path, wbits, abits, symmetric_acts):
    q = _tiny(wbits, abits, symmetric_acts=symmetric_acts)
    path = tmp_path / "m.onnx"
    info = to_onnx(q, torch.randn(1, 3, 12, 12), path, float_bias=True)
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask  # as a plain open() would create it
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 13 and info["opset"] == 13
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 3 and ops.count("Gemm") == 1
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    # first-layer policy: the image goes into the first conv in float
    readers = [n.op_type for n in model.graph.node if "input" in n.input]
    assert readers == ["Conv"]
    # weights: per-channel int8 codes, positive scales (BN sign folded into the codes), zero point 0
    # except in channels whose codes minus zero point do not fit int8 (asymmetric grids)
    saw_symmetric = False
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            w = next(m for m in model.graph.node if m.output[0] == n.input[1])
            assert w.op_type == "DequantizeLinear" and w.attribute[0].i == 0
            codes, scale, zp = (inits[i] for i in w.input)
            assert codes.dtype == np.int8 and scale.shape == (codes.shape[0],) and (scale > 0).all()
            d = codes.astype(np.int32).reshape(len(zp), -1) - zp.astype(np.int32)[:, None]
            needs_zp = (d.min(1) < -128) | (d.max(1) > 127)
            assert ((zp != 0) == needs_zp).all()
            saw_symmetric |= bool((zp == 0).any())
    assert saw_symmetric
    # activation pairs: the grid's own dtype, scale and zero point
    zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == (np.int8 if symmetric_acts else np.uint8) for z in zps)
    layer = q.conv2.act_quantizer
    s, z = layer.qparams()
    assert any(np.float32(inits[n.input[1]]) == np.float32(s.item()) and int(inits[n.input[2]]) == int(z.item())
               for n in model.graph.node if n.op_type == "QuantizeLinear")
    x = torch.randn(16, 3, 12, 12)
    ref, out, _ = _check_codes(q, path, info, x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_first_layer_8bit_input_is_quantized(tmp_path):
    torch.manual_seed(0)
    q = ptq(healthy(Tiny(), (3, 12, 12)), (3, 12, 12), 8, 8, quantize_first_input=True)
    info = to_onnx(q, torch.randn(1, 3, 12, 12), tmp_path / "m.onnx", float_bias=True)
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [n.op_type for n in model.graph.node if "input" in n.input] == ["QuantizeLinear"]
    assert "conv1" in info["input_codes"]
    _check_codes(q, tmp_path / "m.onnx", info, torch.randn(16, 3, 12, 12))


def test_int4_initializers_opset21_same_function(tmp_path):
    q = _tiny(4, 4)
    x = torch.randn(8, 3, 12, 12)
    info8 = to_onnx(q, x[:1], tmp_path / "a.onnx", float_bias=True)
    info4 = to_onnx(q, x[:1], tmp_path / "b.onnx", float_bias=True, int4_weights=True)
    assert info8["opset"] == 13 and info8["int4_weights"] == 0
    model = onnx.load(str(tmp_path / "b.onnx"))
    assert model.opset_import[0].version == 21 == info4["opset"]
    int4 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert info4["int4_weights"] == 2 and len(int4) == 2 * 2  # codes + zero points of the 4-bit convs
    a = ort.run(_session(tmp_path / "a.onnx", False), x)
    b = ort.run(_session(tmp_path / "b.onnx", False), x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    _check_codes(q, tmp_path / "b.onnx", info4, x)


class WithSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return self.gate(self.conv(x))


def test_errors_name_the_problem_and_write_nothing(tmp_path):
    torch.manual_seed(0)
    q = ptq(WithSigmoid(), (3, 8, 8), 8, 8)
    path = tmp_path / "m.onnx"
    with pytest.raises(UnsupportedLayerError, match=r"'gate' \(Sigmoid\)"):
        to_onnx(q, torch.randn(1, 3, 8, 8), path)
    assert list(tmp_path.iterdir()) == []
    good = _tiny()
    with pytest.raises(ValueError, match="example_input"):
        to_onnx(good, torch.randn(3, 12, 12), path)
    with pytest.raises(ValueError, match="opset"):
        to_onnx(good, torch.randn(1, 3, 12, 12), path, int4_weights=True, opset=13)
    with pytest.raises(ValueError, match="no quantized layer"):
        to_onnx(nn.Sequential(nn.Conv2d(3, 3, 1)), torch.randn(1, 3, 4, 4), path)
    with pytest.raises(FileNotFoundError, match="path"):
        to_onnx(good, torch.randn(1, 3, 12, 12), tmp_path / "missing" / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("name,wbits,abits", [("resnet18", 4, 4), ("mobilenet_v2", 8, 8),
                                               ("efficientnet_lite0", 4, 4)])
def test_imagenet_models_random_weights(tmp_path, name, wbits, abits):
    from zsq_engine.models import get_model

    torch.manual_seed(0)
    shape = (3, 32, 32)
    q = ptq(healthy(get_model(name, num_classes=10), shape, batches=1), shape, wbits, abits, weight_method="minmax")
    x = torch.randn(2, *shape)
    info = to_onnx(q, x[:1], tmp_path / "exact.onnx", float_bias=True)
    ref, out, flips = _check_codes(q, tmp_path / "exact.onnx", info, x, chaotic=True)
    if not flips:
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    info = to_onnx(q, x[:1], tmp_path / "m.onnx")
    _fused(tmp_path / "m.onnx", info)
    assert torch.isfinite(ort.run(ort.session(tmp_path / "m.onnx"), x)).all()


@pytest.mark.slow
@needs_fmnist
@pytest.mark.parametrize("wbits,abits", [(8, 8), (4, 4)])
def test_fmnist_agreement_and_fusion(tmp_path, wbits, abits):
    from zsq_engine.data.sources import fmnist_calibration
    from zsq_engine.data import load_fashion_mnist, normalize_fashion_mnist
    from zsq_engine.models import get_model
    from zsq_engine.quant import naive_ptq

    images, labels = load_fashion_mnist("test")
    x, y = normalize_fashion_mnist(images[:2000]), labels[:2000]
    calib = [b for b, _ in fmnist_calibration(256, None, 0)]
    q = naive_ptq(get_model("fmnist_resnet", pretrained=True).eval(), calib, wbits, abits, progress=False).eval()
    with torch.no_grad():
        ref = torch.cat([q(x[i:i + 500]) for i in range(0, len(x), 500)])
    assert (ref.argmax(1) == y).float().mean() > 0.85  # a working model, not two equally broken ones
    # the graph's own function (float biases, no engine rewriting): the fake-quant model
    info = to_onnx(q, x[:1], tmp_path / "exact.onnx", float_bias=True)
    out = ort.run(_session(tmp_path / "exact.onnx", False), x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean().item() * 100 >= 99.9
    _check_codes(q, tmp_path / "exact.onnx", info, x[:200])
    # what ONNX Runtime runs: fused integer kernels, int32 biases
    info = to_onnx(q, x[:1], tmp_path / "m.onnx")
    out = ort.run(ort.session(tmp_path / "m.onnx"), x)
    agreement = (out.argmax(1) == ref.argmax(1)).float().mean().item() * 100
    assert agreement >= 99.9, f"top-1 agreement {agreement:.2f} %"
    ops = _fused(tmp_path / "m.onnx", info)
    assert ops.get("QLinearConv") == 3 and ops.get("QGemm") == 1  # each block's conv1 and the classifier


@pytest.mark.slow
@needs_fmnist
def test_cli_export_and_bench_row(tmp_path, capsys):
    from zsq_engine.cli import main

    out = tmp_path / "m.onnx"
    rc = main(["export", "--model", "fmnist_resnet", "--wbits", "4", "--abits", "4", "--calib-images", "32",
               "--out", str(out), "--check", "--check-limit", "200"])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file(), text
    assert "top-1 agreement" in text and "QLinearConv" in text
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    # an existing output is refused before any work, reported in one line and left as it was
    keep = tmp_path / "keep.onnx"
    keep.write_bytes(b"earlier result")
    rc = main(["export", "--model", "fmnist_resnet", "--calib-images", "32", "--out", str(keep)])
    err = capsys.readouterr().err
    assert rc == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    assert keep.read_bytes() == b"earlier result"
    rc = main(["bench", "--model", "fmnist_resnet", "--calib-images", "32", "--batch-sizes", "2", "--warmup", "1",
               "--repeats", "1", "--peers", "onnxruntime", "--onnxruntime", "--device", "cpu", "--no-progress",
               "--out", str(tmp_path / "bench")])
    assert rc == 0
    import json

    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert {r["impl"] for r in rows} >= {"fp32", "zsq int", "onnxruntime"}
    assert all(r["ms"] > 0 for r in rows)


@pytest.mark.slow
def test_qat_student_with_learnable_ranges(tmp_path):
    """A QAT student (learnable LSQ ranges, trained float weights) exports like any fake-quant model
    (the Genie / QAT checkpoint rows of docs/export.md were measured with `zsq export --check`)."""
    torch.manual_seed(0)
    student = perturbed_qat_student()
    x = torch.randn(8, 1, 28, 28)
    info = to_onnx(student, x[:1], tmp_path / "exact.onnx", float_bias=True)
    ref, out, _ = _check_codes(student, tmp_path / "exact.onnx", info, x)
    assert (ref.argmax(1) == out.argmax(1)).all()
    info = to_onnx(student, x[:1], tmp_path / "m.onnx")
    _fused(tmp_path / "m.onnx", info)


def _bias_values(path):
    """{layer: the bias the graph adds, as fp64} (int32 codes x accumulator scale, or fp32)."""
    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm") and len(n.input) == 3:
            b = n.input[2]
            if b in inits:
                out[n.output[0]] = inits[b].astype(np.float64)
            else:
                dq = producer[b]
                out[n.output[0]] = inits[dq.input[0]].astype(np.float64) * inits[dq.input[1]].astype(np.float64)
    return out


def test_naive_ptq_biases_on_the_accumulator_grid(tmp_path):
    """naive PTQ rounds each quantized-input layer's bias onto s_x * s_w[o]: at most half a step
    from the float bias, a whole number of steps, the float-input stem untouched; the int32 bias
    of the default export then equals the model's bias (no rounding left to an engine)."""
    from zsq_engine.quant import naive_ptq, quant_layers
    from zsq_engine.runtime.qparams import act_qparams, integer_weight

    torch.manual_seed(0)
    fp = healthy(Tiny(), (3, 12, 12))
    calib = [torch.randn(8, 3, 12, 12) for _ in range(2)]
    raw = naive_ptq(fp, calib, 8, 8, progress=False, snap_bias=False).eval()
    q = naive_ptq(fp, calib, 8, 8, progress=False).eval()
    raw_layers = dict(quant_layers(raw))
    moved = 0
    for name, layer in quant_layers(q):
        before = raw_layers[name].bias.detach().double()
        if layer.act_quantizer is None:  # the float-input stem: no integer accumulator
            assert torch.equal(layer.bias.detach().double(), before)
            continue
        # the fp32 grid the export (and ONNX Runtime) multiply out: fp32(s_x) * fp32(s_w[o]) in fp32
        acc = (torch.tensor(act_qparams(layer.act_quantizer, name).scale, dtype=torch.float32)
               * integer_weight(layer, name)[1].float()).double()
        steps = layer.bias.detach().double() / acc
        assert torch.allclose(steps, steps.round(), atol=1e-3, rtol=0), name
        assert bool(((layer.bias.detach().double() - before).abs() <= acc * (0.5 + 1e-3)).all()), name
        moved += int((layer.bias.detach() != raw_layers[name].bias.detach()).sum())
    assert moved > 0
    info = to_onnx(q, calib[0][:1], tmp_path / "m.onnx")
    biases = _bias_values(tmp_path / "m.onnx")
    layers = dict(quant_layers(q))
    assert info["int_bias_layers"]
    for name in info["int_bias_layers"]:
        got = biases[name.replace(".", "_") + "_out"]
        want = layers[name].bias.detach().double().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


@pytest.mark.slow
def test_load_quantized_keeps_the_8bit_first_input(tmp_path):
    """save -> load of a model with an 8-bit first-layer input: the loaded model has the stem's
    input quantizer, computes the same outputs and exports the same graph."""
    from zsq_engine.models import get_model
    from zsq_engine.recon import load_quantized, save_quantized

    torch.manual_seed(0)
    q = ptq(get_model("fmnist_resnet", pretrained=True), (1, 28, 28), 8, 8, quantize_first_input=True)
    save_quantized(tmp_path / "q.pt", q, {"model": "fmnist_resnet", "wbits": 8, "abits": 8, "first_last_bits": 8})
    loaded, _ = load_quantized(tmp_path / "q.pt")
    assert loaded.conv1.act_quantizer is not None
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q(x), rtol=0, atol=0)
    to_onnx(q, x[:1], tmp_path / "a.onnx")
    to_onnx(loaded, x[:1], tmp_path / "b.onnx")
    a, b = onnx.load(str(tmp_path / "a.onnx")), onnx.load(str(tmp_path / "b.onnx"))
    assert [n.op_type for n in b.graph.node if "input" in n.input] == ["QuantizeLinear"]
    assert a.graph.SerializeToString() == b.graph.SerializeToString()


@pytest.mark.slow
def test_mixed_precision_plan_exports(tmp_path, capsys):
    """A per-layer plan (2..8-bit weights, 4 / 6 / 8-bit inputs in one model), saved as `zsq quantize
    --bits-budget` saves it, exported by `zsq export --checkpoint`: each layer's grids in the graph,
    the exact graph's input codes those of the fake-quant model, ONNX Runtime fuses, top-1 agrees."""
    from zsq_engine.cli import main
    from zsq_engine.models import get_model
    from zsq_engine.quant import calibrate_activations, quant_layers, quantize_model, snap_biases
    from zsq_engine.quant.bit_allocation import apply_bit_plan
    from zsq_engine.recon import load_quantized, save_quantized

    torch.manual_seed(0)
    q = quantize_model(get_model("fmnist_resnet", pretrained=True).eval(), 8, 8, weight_method="minmax")
    names = [n for n, _ in quant_layers(q)]
    choices = [(8, 8), (4, 4), (2, 6), (6, 4), (3, 8), (4, 6)]
    plan = {n: choices[i % len(choices)] for i, n in enumerate(names)}
    apply_bit_plan(q, plan, weight_method="minmax")
    calibrate_activations(q, [torch.randn(32, 1, 28, 28) for _ in range(2)], progress=False)
    snap_biases(q)
    q.eval()
    save_quantized(tmp_path / "q.pt", q, {"model": "fmnist_resnet", "wbits": 8, "abits": 8, "first_last_bits": 8,
                                          "layer_bits": {k: list(v) for k, v in plan.items()}})
    rc = main(["export", "--checkpoint", str(tmp_path / "q.pt"), "--out", str(tmp_path / "m.onnx")])
    assert rc == 0, capsys.readouterr()
    loaded, _ = load_quantized(tmp_path / "q.pt")
    layers = dict(quant_layers(loaded))
    for n in names:
        assert layers[n].weight_bits == plan[n][0], n
        assert layers[n].act_bits == (None if n == names[0] else plan[n][1]), n  # the stem's input is float
    x = torch.randn(64, 1, 28, 28)
    info = to_onnx(loaded, x[:1], tmp_path / "exact.onnx", float_bias=True)
    _check_codes(loaded, tmp_path / "exact.onnx", info, x)
    info = to_onnx(loaded, x[:1], tmp_path / "m2.onnx")
    assert (tmp_path / "m2.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()
    # each layer's input codes: a 4- or 6-bit grid clamps them to its own top code, 8-bit needs no Clip
    model = onnx.load(str(tmp_path / "m2.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: nd for nd in model.graph.node for o in nd.output}
    for n, codes in info["input_codes"].items():
        node, bits = producer[codes], layers[n].act_bits
        assert node.op_type == ("Clip" if bits < 8 else "QuantizeLinear"), n
        if bits < 8:
            assert int(inits[node.input[2]]) == layers[n].act_quantizer.quant_max == 2 ** bits - 1
    _fused(tmp_path / "m2.onnx", info)
    with torch.no_grad():
        ref = loaded(x)
    out = ort.run(ort.session(tmp_path / "m2.onnx"), x)
    assert (out.argmax(1) == ref.argmax(1)).all()


def _assert_biases_on_grid(q):
    from zsq_engine.quant import quant_layers
    from zsq_engine.quant.bias_grid import accumulator_scale

    checked = 0
    for name, layer in quant_layers(q):
        acc = accumulator_scale(layer, name)
        if acc is None or layer.bias is None:
            continue
        live = layer.quantized_weight().reshape(acc.numel(), -1).ne(0).any(1)
        steps = layer.bias.detach().double()[live] / acc.double()[live]
        # the bias is stored in fp32: k steps are exact only to k * 2^-24 (a classifier's k is ~1e4)
        assert torch.allclose(steps, steps.round(), atol=1e-3, rtol=1e-6), name
        checked += 1
    assert checked > 0


@pytest.mark.slow
def test_reconstruction_and_qat_end_with_biases_on_the_accumulator_grid():
    """Genie-M / QDrop reconstruction and QAT end where naive PTQ does: every quantized-input
    layer's bias a whole number of s_x * s_w[o] steps (so the export adds exactly that bias)."""
    from zsq_engine.qat import train_qat
    from zsq_engine.recon import reconstruct_model

    torch.manual_seed(0)
    fp = healthy(Tiny(), (3, 12, 12))
    r = reconstruct_model(fp, torch.randn(16, 3, 12, 12), 4, 4, iters=2, show_progress=False)
    _assert_biases_on_grid(r.model)
    assert r.meta["biases_on_accumulator_grid"] > 0
    res = train_qat(healthy(Tiny(), (3, 12, 12)), "gdfq", 4, 4, input_shape=(3, 12, 12), num_classes=5,
                    epochs=1, iters_per_epoch=1, batch_size=8, calib_batches=1, gen_warmup_iters=1)
    _assert_biases_on_grid(res.student)
    assert res.meta["biases_on_accumulator_grid"] > 0


def test_a_bias_beyond_int32_steps_makes_its_near_dead_channel_constant(tmp_path):
    """A BatchNorm channel with gamma ~1e-6 and beta 2 folds into weights ~1e-7 and a bias of
    ~1e11 accumulator steps (EfficientNet-Lite0's stem has such a channel): naive PTQ zeroes that
    channel's weights, keeps its float bias, leaves every other channel alone, and the model
    exports with an int32 bias whose graph computes the fake-quant model's codes."""
    from zsq_engine.quant import naive_ptq, quant_layers
    from zsq_engine.quant.bias_grid import INT32_MAX, accumulator_scale

    torch.manual_seed(0)
    fp = healthy(Tiny(), (3, 12, 12))
    with torch.no_grad():
        fp.bn2.weight[2] *= 1e-6
        fp.bn2.bias[2] = 2.0
    calib = [torch.randn(8, 3, 12, 12) for _ in range(2)]
    raw = dict(quant_layers(naive_ptq(fp, calib, 8, 8, progress=False, snap_bias=False).eval()))["conv2"]
    acc = accumulator_scale(raw, "conv2")
    assert float(raw.bias[2].detach()) / float(acc[2]) > INT32_MAX  # the case exists before snapping
    assert raw.quantized_weight()[2].ne(0).any()
    q = naive_ptq(fp, calib, 8, 8, progress=False).eval()
    layer = dict(quant_layers(q))["conv2"]
    assert torch.equal(layer.weight[2], torch.zeros_like(layer.weight[2]))
    assert torch.equal(layer.bias[2], raw.bias[2])  # a dead channel keeps its float bias
    others = [c for c in range(8) if c != 2]
    assert torch.equal(layer.weight[others], raw.weight[others])
    x = torch.randn(16, 3, 12, 12)
    info = to_onnx(q, x[:1], tmp_path / "m.onnx")
    assert "conv2" in info["int_bias_layers"]
    _check_codes(q, tmp_path / "m.onnx", info, x)  # every layer's input codes as the fake-quant model's
    _fused(tmp_path / "m.onnx", info)
