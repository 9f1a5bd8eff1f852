"""What the ``zsq`` commands say and leave behind: resume and reuse messages, a note when the
data is smaller than the preset asks, the QAT warm-up override and phase lines with
--no-progress, CPU-sized defaults, the model list, output permissions, and a demo that keeps its
results without matplotlib. Runs are tiny (a few images, one iteration)."""
import json
import os
import re
import sys

import pytest
import torch

from zsq_engine.cli import build_parser, main
from zsq_engine.utils import save_torch_atomic

from _support.data import needs_fmnist


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_synthesize_says_where_it_resumes_and_when_it_reuses(tmp_path, capsys, monkeypatch):
    from zsq_engine.synth.io import PartStore

    out = tmp_path / "z.pt"
    argv = ["synthesize", "--method", "zeroq", "--num", "4", "--batch-size", "2", "--iters", "1", "--out", str(out),
            "--no-progress", "--device", "cpu"]
    real_write = PartStore.write_batch
    calls = []

    def interrupted_after_one(self, b, payload):
        calls.append(b)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(self, b, payload)

    monkeypatch.setattr(PartStore, "write_batch", interrupted_after_one)
    assert main(argv) == 130
    interrupted = capsys.readouterr()
    assert "rerun the same command to continue" in interrupted.err
    assert re.search(r"batch 1/2 done \([0-9.]+ s; about [0-9.]+ (s|min) left\)", interrupted.out)
    assert not out.exists() and (tmp_path / "z.pt.parts" / "batch_00000.pt").is_file()
    monkeypatch.setattr(PartStore, "write_batch", real_write)

    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "1 of 2 batches done, continuing at batch 2 of 2" in printed
    assert "batch 2/2 done" in printed and "batch 1/2 done" not in printed  # one line per batch it ran
    assert "left)" not in printed.split("batch 2/2 done")[1].splitlines()[0]  # nothing left after the last batch
    assert _mode(out) == 0o666 & ~_umask()  # a normal file, not mkstemp's 0600

    assert main(argv) == 0
    assert "already holds this run (same settings); reused it" in capsys.readouterr().out


@needs_fmnist
def test_quantize_says_when_the_data_is_smaller_than_the_preset(tmp_path, capsys, monkeypatch):
    import zsq_engine.recon

    torch.save({"images": torch.randn(8, 1, 28, 28), "labels": None, "meta": {"model": "fmnist_resnet"}},
               tmp_path / "s.pt")
    seen = {}

    def stop(model, images, *a, **k):
        seen["images"] = images.shape[0]
        raise KeyboardInterrupt

    monkeypatch.setattr(zsq_engine.recon, "reconstruct_model", stop)
    assert main(["quantize", "--data", str(tmp_path / "s.pt"), "--out", str(tmp_path / "q.pt"), "--no-progress"]) == 130
    printed = capsys.readouterr().out
    assert "holds 8 images but preset fast asks for 256: using all 8" in printed
    assert "reconstructing fmnist_resnet W4A4 (genie, preset fast) on 8 images" in printed
    assert seen["images"] == 8 and not (tmp_path / "q.pt").exists()


def _fake_checkpoint(path, epoch: int, prepared: bool = True) -> None:
    save_torch_atomic({"format": 1, "identity": {"method": "gdfq"}, "epoch": epoch, "prepared": prepared,
                       "student": {}, "history": [], "rng": {}}, path)


def test_qat_says_from_which_epoch_it_resumes_and_passes_the_warmup_override(tmp_path, capsys, monkeypatch):
    import zsq_engine.qat

    seen = {}

    def stop(model, method, wbits, abits, **kw):
        seen.update(kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(zsq_engine.qat, "train_qat", stop)
    monkeypatch.setattr("zsq_engine.commands.quantize.check_eval_data", lambda *a, **k: None)
    out, ckpt = tmp_path / "q.pt", tmp_path / "run.ckpt"
    _fake_checkpoint(ckpt, epoch=2)
    base = ["qat", "--method", "gdfq", "--out", str(out), "--checkpoint", str(ckpt), "--no-progress",
            "--no-start-eval", "--device", "cpu"]
    assert main(base + ["--resume"]) == 130
    assert f"resuming {ckpt} after epoch 2 of 4: continuing with epoch 3" in capsys.readouterr().out
    assert seen["resume"] is True and seen["checkpoint"] == ckpt

    _fake_checkpoint(ckpt, epoch=0, prepared=False)
    assert main(base + ["--resume"]) == 130
    assert "the preparation had not finished" in capsys.readouterr().out

    ckpt.unlink()
    assert main(base + ["--warmup-steps", "5", "--epochs", "1"]) == 130
    printed = capsys.readouterr().out
    assert "preparing: generator warm-up (5 steps), then activation calibration (4 batches)" in printed
    assert seen["gen_warmup_iters"] == 5 and seen["epochs"] == 1 and seen["resume"] is False


def test_one_cpu_sized_default_policy():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("synthesize", "quantize", "qat", "demo"):
        action = next(a for a in sub[name]._actions if a.dest == "preset")
        assert action.default == "fast", name
    for name in ("synthesize", "quantize", "qat"):
        text = sub[name].format_help()
        assert "paper" in text and "fast" in text and "`zsq info`" in text, name
    assert "--warmup-steps" in sub["qat"].format_help()
    assert "one line per phase" in sub["qat"].format_help()


def test_info_lists_the_models(capsys):
    from zsq_engine.models import list_models

    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "models (--model NAME):" in text and all(name in text for name in list_models())
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["models"]["fmnist_resnet"]["input_shape"] == [1, 28, 28]


def test_atomic_writes_get_the_umask_permissions_and_never_half_a_file(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    for mask in (0o022, 0o077):
        old = os.umask(mask)
        try:
            save_torch_atomic({"a": torch.ones(2)}, path)
        finally:
            os.umask(old)
        assert _mode(path) == 0o666 & ~mask
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        save_torch_atomic({"a": torch.zeros(2)}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]


@pytest.mark.slow
@needs_fmnist
def test_convert_writes_a_normal_file_and_replaces_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "int.pt"
    argv = ["convert", "--model", "fmnist_resnet", "--calib-images", "8", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert _mode(out) == 0o666 & ~_umask()
    first = out.read_bytes()
    assert main(argv) == 2 and out.read_bytes() == first
    assert "already exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--wbits", "4", "--abits", "4"]) == 0
    assert out.read_bytes() != first


@pytest.mark.slow
@needs_fmnist
def test_demo_writes_its_results_without_matplotlib(tmp_path, capsys, monkeypatch):
    from zsq_engine.data import sources as data_sources

    real = data_sources.fmnist_batches
    monkeypatch.setattr(data_sources, "fmnist_batches",
                        lambda split, bs, root: [next(iter(real(split, 64, root)))])  # 64 test images
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--calib-images", "16", "--synth-num", "4", "--synth-iters", "1",
               "--iters", "1", "--no-integer", "--no-progress", "--device", "cpu"])
    assert rc == 0
    assert "figure skipped (matplotlib is not installed" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ["FP32", "naive PTQ", "Genie (zero-shot)", "QDrop (real data)"]
    report = (out / "report.md").read_text()
    assert "demo.png" not in report and "Genie (zero-shot)" in report
    assert not (out / "demo.png").exists()


def test_demo_latency_line_is_a_median_of_interleaved_runs_with_a_noise_warning(monkeypatch, capsys):
    import zsq_engine.evaluation
    import zsq_engine.runtime
    import zsq_engine.runtime.latency as latency
    from zsq_engine.commands import demo

    monkeypatch.setattr(zsq_engine.runtime, "convert", lambda q: torch.nn.Identity())
    monkeypatch.setattr(zsq_engine.evaluation, "evaluate_accuracy", lambda *a, **k: 90.0)
    monkeypatch.setattr(latency, "make_contenders", lambda *a, **k: [])

    def fake_runs(int_ms_batch1):
        runs = iter(int_ms_batch1)

        def measure(contenders, shape, batches, device, **kw):
            i = next(runs)
            return [{"impl": "fp32", "batch": 1, "ms": 2.0}, {"impl": "zsq int", "batch": 1, "ms": i},
                    {"impl": "fp32", "batch": 64, "ms": 10.0}, {"impl": "zsq int", "batch": 64, "ms": 5.0}]
        return measure

    monkeypatch.setattr(latency, "measure", fake_runs([1.0, 1.0, 1.05, 0.95, 1.0]))
    quiet = demo.integer_model_summary(None, None, [], torch.device("cpu"), False)
    assert "median of 5 interleaved runs" in quiet["line"] and "(2.00x)" in quiet["line"]
    assert "(2.00x)" in quiet["line"].split("batch 64")[1] and not quiet["latency_noisy"]
    assert "noisy" not in capsys.readouterr().err

    monkeypatch.setattr(latency, "measure", fake_runs([1.0, 0.2, 1.0, 2.0, 1.0]))  # a busy machine
    noisy = demo.integer_model_summary(None, None, [], torch.device("cpu"), False)
    assert noisy["latency_noisy"] and "[noisy: batch 1 ratios 1.00x-10.00x" in noisy["line"]
    assert "(2.00x)" in noisy["line"]  # the median ignores the outliers
    assert "warning: the latency measurement is noisy" in capsys.readouterr().err


@pytest.mark.slow
def test_no_requires_grad_scalar_warning_from_synthesis_or_reconstruction():
    """The progress bars read the loss of the last step: detached first, so torch does not warn
    that a tensor requiring grad was converted to a Python number."""
    import warnings

    from zsq_engine.models import get_model
    from zsq_engine.recon import reconstruct_model
    from zsq_engine.synth import synthesize

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*requires_grad.*")
        r = synthesize("fmnist_resnet", "zeroq", num=4, batch_size=2, iters=1, preset="fast", show_progress=True)
        reconstruct_model(get_model("fmnist_resnet", pretrained=True), r.images, 4, 4, method="genie", iters=1,
                          num=4, show_progress=True)


@needs_fmnist
def test_eval_prints_a_line_per_row_without_progress_bars(capsys, monkeypatch):
    from zsq_engine.data import sources as data_sources

    real = data_sources.fmnist_batches
    monkeypatch.setattr(data_sources, "fmnist_batches", lambda split, bs, root: [next(iter(real(split, 64, root)))])
    assert main(["eval", "--bits", "W8A8", "--calib-images", "16", "--no-progress", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("  FP32 FP32: ") and lines[1].startswith("  naive PTQ W8A8: ")
