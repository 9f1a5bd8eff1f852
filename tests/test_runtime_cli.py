"""`zsq convert`, `zsq bench` and the latency helpers behind them (small calibration sets, tiny
timing loops: this checks wiring and outputs, never speed)."""
import json

import pytest
import torch

from zsq_engine.cli import main
from zsq_engine.data.sources import fmnist_calibration
from zsq_engine.models import get_model
from zsq_engine.quant import naive_ptq
from zsq_engine.recon import save_quantized
from zsq_engine.runtime import convert, load
from zsq_engine.runtime.io import load_with_meta
from zsq_engine.runtime.latency import make_contenders, measure, torch_ao_x86_int8

from _support.data import needs_fmnist


@pytest.fixture(scope="module")
def calib():
    return [x for x, _ in fmnist_calibration(32, None, 0)]


@pytest.mark.slow
@needs_fmnist
def test_convert_naive_ptq_matches_the_library_and_checks(tmp_path, calib, capsys):
    out = tmp_path / "int.pt"
    rc = main(["convert", "--model", "fmnist_resnet", "--wbits", "4", "--abits", "4", "--calib-images", "32",
               "--out", str(out), "--check", "--check-limit", "200", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "top-1 agreement" in printed and "8 with packed int4 weights" in printed
    im, meta = load_with_meta(out)
    assert meta["model"] == "fmnist_resnet" and meta["wbits"] == 4 and meta["check"]["images"] == 200
    assert meta["check"]["agreement"] >= 99.0
    q = naive_ptq(get_model("fmnist_resnet", pretrained=True), calib, 4, 4, progress=False)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(im(x), convert(q)(x))  # the CLI built the same model the library builds


@needs_fmnist
def test_convert_from_a_quantize_checkpoint(tmp_path, calib):
    q = naive_ptq(get_model("fmnist_resnet", pretrained=True), calib, 4, 4, progress=False).eval()
    save_quantized(tmp_path / "q.pt", q, {"model": "fmnist_resnet", "wbits": 4, "abits": 4, "first_last_bits": 8,
                                          "method": "genie"})
    rc = main(["convert", "--checkpoint", str(tmp_path / "q.pt"), "--out", str(tmp_path / "int.pt"), "--no-progress"])
    assert rc == 0
    im = load(tmp_path / "int.pt")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = q(x)
    assert (im(x) - ref).abs().max() < 0.05 * (1 + ref.abs().max())
    assert torch.equal(im(x), convert(q)(x))


@pytest.mark.slow
@needs_fmnist
def test_bench_writes_table_json_and_plot(tmp_path, capsys):
    rc = main(["bench", "--model", "fmnist_resnet", "--wbits", "8", "--abits", "8", "--calib-images", "16",
               "--batch-sizes", "1", "3", "--warmup", "1", "--repeats", "1", "--out", str(tmp_path), "--no-progress",
               "--peers", "torch.ao"])  # the compiled peers are tests/test_bench_peers.py's
    assert rc == 0
    printed = capsys.readouterr().out
    assert "torch.ao int8" in printed and "zsq int" in printed
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["rows"]
    assert {(r["impl"], r["batch"]) for r in rows} == {(i, b) for i in ("fp32", "zsq int", "torch.ao int8")
                                                       for b in (1, 3)}
    for r in rows:
        assert r["ms"] > 0 and r["images_per_s"] == pytest.approx(r["batch"] / (r["ms"] / 1e3))
        assert r["speedup_vs_fp32"] > 0 and r["speedup_vs_torch_ao"] > 0
    assert all(r["speedup_vs_fp32"] == 1.0 for r in rows if r["impl"] == "fp32")
    assert data["settings"]["model"] == "fmnist_resnet" and data["settings"]["input_shape"] == [1, 28, 28]
    assert (tmp_path / "bench.png").stat().st_size > 1000


@pytest.mark.slow
@needs_fmnist
def test_bench_an_integer_model_file(tmp_path, calib):
    from zsq_engine.runtime import save

    q = naive_ptq(get_model("fmnist_resnet", pretrained=True), calib, 4, 4, progress=False)
    save(convert(q), tmp_path / "int.pt", meta={"model": "fmnist_resnet", "wbits": 4, "abits": 4})
    rc = main(["bench", "--int-model", str(tmp_path / "int.pt"), "--batch-sizes", "2", "--warmup", "1",
               "--repeats", "1", "--no-torch-ao", "--peers", "none", "--out", str(tmp_path / "b"), "--no-progress"])
    assert rc == 0
    rows = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]
    assert [(r["impl"], r["precision"]) for r in rows] == [("fp32", "fp32"), ("zsq int", "W4A4")]


@pytest.mark.parametrize("argv,message,code", [  # 2: wrong command line, 1: a file or step failed
    (["convert", "--checkpoint", "q.pt", "--model", "resnet18", "--out", "x.pt"], "drop --model", 2),
    (["convert", "--model", "fmnist_resnet", "--wbits", "9", "--out", "x.pt"], "--wbits", 2),
    (["convert", "--model", "nope", "--out", "x.pt"], "unknown model", 2),
    (["convert", "--checkpoint", "missing.pt", "--out", "x.pt"], "does not exist", 1),
    (["bench", "--int-model", "missing.pt"], "does not exist", 1),
    (["bench", "--model", "fmnist_resnet", "--cuda-graph", "-1"], "--cuda-graph", 2),
])
def test_clear_errors(argv, message, code, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    assert message in capsys.readouterr().err


def test_check_needs_val_dir_for_imagenet_models(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["convert", "--model", "resnet18", "--calib-images", "2", "--out", "x.pt", "--check", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--check needs evaluation images" in err and "--val-dir" in err


@pytest.mark.slow
@needs_fmnist
def test_torch_ao_baseline_is_an_int8_version_of_the_network(calib):
    from zsq_engine.data import load_fashion_mnist, normalize_fashion_mnist

    fp = get_model("fmnist_resnet", pretrained=True).eval()
    ao = torch_ao_x86_int8(fp, calib)
    assert any("quantized" in type(m).__module__ for m in ao.modules())
    images, _ = load_fashion_mnist("test")
    x = normalize_fashion_mnist(images[:128])
    with torch.no_grad():
        same = (ao(x).argmax(1) == fp(x).argmax(1)).float().mean()
    assert same >= 0.95
    with pytest.raises(ValueError, match="calib_batches is empty"):
        torch_ao_x86_int8(fp, [])


def test_measure_rows_and_ratios():
    fp = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 2)).eval()
    contenders = make_contenders(fp, None, "cpu")  # fp16 / bf16 are GPU-only: fp32 alone here
    assert [c.name for c in contenders] == ["fp32"]
    slow = make_contenders(fp, None, "cpu")[0]
    slow.name = "slow"
    slow.fn = lambda x, f=slow.fn: [f(x) for _ in range(3)][-1]
    rows = measure(contenders + [slow], (3, 6, 6), [1, 2], "cpu", warmup=1, repeats=3, show_progress=False)
    assert len(rows) == 4
    for r in rows:
        base = next(b for b in rows if b["batch"] == r["batch"] and b["impl"] == "fp32")
        assert r["speedup_vs_fp32"] == pytest.approx(base["ms"] / r["ms"])
        assert r["speedup_vs_torch_ao"] is None
    with pytest.raises(ValueError, match="precisions"):
        make_contenders(fp, None, "cpu", precisions=("fp8",))
