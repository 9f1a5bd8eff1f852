"""Users' own models (``package.module:factory``), checked ``--weights`` and ``--val-dir`` end to end.

The user's module (``_support/user_modules.py``) is written by the ``user_module`` fixture into
tmp_path and put on sys.path; the image folders are small solid-colour PNGs written by the tests
(``_support/data.py``).
"""
from __future__ import annotations

import pytest
import torch

from _support.data import SHARK, TENCH, TISSUE, write_folder
from zsq_engine.cli import main


def _colour_for_index(k, j):
    return (8 * (k // 32), 8 * (k % 32), 40 * j)


def test_eval_user_oracle_scores_wordnet_subset_with_imagenet_labels(user_module, tmp_path, capsys):
    classes = [TENCH, SHARK, TISSUE]  # ImageNet indices 0, 2, 999
    index = {TENCH: 0, SHARK: 2, TISSUE: 999}
    root = write_folder(tmp_path / "val", classes, per_class=2,
                        colour=lambda c, j: _colour_for_index(index[classes[c]], j))
    rc = main(["eval", "--model", f"{user_module}:oracle", "--val-dir", str(root), "--bits", "--no-progress",
               "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    # sorted-position labels (0, 1, 2) would score 1 of 3 classes; the ImageNet indices score all
    row = next(line for line in out.splitlines() if line.startswith("| FP32"))
    assert [c.strip() for c in row.strip("|").split("|")][2:5] == ["100.00", "", "100.00"]


def test_user_model_facts_from_module_and_flags(user_module):
    from zsq_engine.models import get_model, get_model_info

    info = get_model_info(f"{user_module}:tiny")
    assert info.input_shape == (3, 32, 32) and info.num_classes == 4 and info.mean == (0.5,) * 3
    assert get_model_info(f"{user_module}:tiny", input_size=48, num_classes=7).input_shape == (3, 48, 48)
    assert get_model_info(f"{user_module}:oracle").num_classes == 1000  # factory attribute over module constant
    assert get_model_info(f"{user_module}:shared", num_classes=9).num_classes == 9  # the flag over both
    assert get_model(f"{user_module}:tiny").training is False
    for spec, msg in [(f"{user_module}:nothing", "has no attribute 'nothing'"),
                      ("no_such_module_xyz:f", "cannot import module"),
                      (f"{user_module}:INPUT_SHAPE", "expected a callable"),
                      (f"{user_module}:", "package.module:factory")]:
        with pytest.raises(ValueError, match=msg):
            get_model(spec)


def test_weights_mismatch_report_lists_every_kind(user_module, tmp_path, capsys):
    from zsq_engine.models import get_model

    spec = f"{user_module}:tiny"
    state = get_model(spec).state_dict()
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, good)  # DDP-style wrapping
    loaded = get_model(spec, weights_path=good)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())

    bad = dict(state)
    del bad["layer1.bn1.running_var"]
    bad["extra.weight"] = torch.zeros(2)
    bad["fc.weight"] = torch.zeros(5, 8)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as exc:
        get_model(spec, weights_path=tmp_path / "bad.pt")
    text = str(exc.value)
    assert "1 keys missing from the file:\n    layer1.bn1.running_var" in text
    assert "1 unexpected keys in the file:\n    extra.weight" in text
    assert "fc.weight: file (5, 8) vs model (4, 8)" in text
    # the CLI prints the same report as one error, no traceback
    rc = main(["eval", "--model", spec, "--weights", str(tmp_path / "bad.pt"), "--val-dir", str(tmp_path),
               "--no-progress"])
    assert rc == 1 and "extra.weight" in capsys.readouterr().err


def test_class_count_mismatch_is_an_error(user_module, tmp_path, capsys):
    root = write_folder(tmp_path / "val", ["a", "b", "c"], per_class=1)
    rc = main(["eval", "--model", f"{user_module}:tiny", "--val-dir", str(root), "--bits", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "has 4 outputs" in err and "3 class directories" in err


def _meta(path):
    return torch.load(path, map_location="cpu", weights_only=True)["meta"]


@pytest.mark.slow
def test_user_model_pipeline_quantize_eval_convert(user_module, tmp_path, capsys):
    """synthesize -> quantize (Genie-M) -> eval of the saved file -> convert --check -> eval of the
    integer file, all on a user model and a --val-dir; the accuracies each step reports must agree
    with an independent re-evaluation of the saved files."""
    from zsq_engine.evaluation import evaluate_topk
    from zsq_engine.recon import load_quantized
    from zsq_engine.runtime.io import load_with_meta

    spec = f"{user_module}:tiny"
    val = write_folder(tmp_path / "val", ["w", "x", "y", "z"], per_class=3)
    common = ["--no-progress", "--device", "cpu"]
    assert main(["synthesize", "--model", spec, "--method", "genie", "--num", "8", "--batch-size", "4",
                 "--iters", "2", "--preset", "fast", "--out", str(tmp_path / "syn.pt")] + common) == 0
    assert main(["quantize", "--model", spec, "--data", str(tmp_path / "syn.pt"), "--wbits", "4", "--abits", "8",
                 "--iters", "3", "--num", "8", "--val-dir", str(val), "--out", str(tmp_path / "q.pt")] + common) == 0
    meta = _meta(tmp_path / "q.pt")
    assert meta["model"] == spec and 0 <= meta["accuracy"] <= meta["top5"] == 100.0  # 4 classes: top-5 is all
    qmodel, _ = load_quantized(tmp_path / "q.pt")
    from zsq_engine.commands.eval_data import folder_dataset
    from zsq_engine.models import get_model_info

    ds = folder_dataset(str(val), get_model_info(spec))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    expect = evaluate_topk(qmodel, [(x, y)], show_progress=False)[1]
    assert meta["accuracy"] == pytest.approx(expect)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "q.pt"), "--val-dir", str(val)] + common) == 0
    assert f"top-1 {expect:.2f} %" in capsys.readouterr().out

    # zero-shot naive PTQ: ranges from the synthetic file only, checked against the API
    from zsq_engine.models import get_model
    from zsq_engine.quant import naive_ptq
    from zsq_engine.synth import load_output

    assert main(["eval", "--model", spec, "--val-dir", str(val), "--calib-data", str(tmp_path / "syn.pt"),
                 "--bits", "W4A4"] + common) == 0
    out = capsys.readouterr().out
    syn = load_output(tmp_path / "syn.pt")["images"]
    naive = naive_ptq(get_model(spec), [(syn, None)], 4, 4, first_last_bits=8, progress=False)
    row = next(line for line in out.splitlines() if "W4A4" in line)
    assert "ranges from 8 synthetic images" in out
    assert f"{evaluate_topk(naive, [(x, y)], show_progress=False)[1]:.2f}" in row

    assert main(["convert", "--checkpoint", str(tmp_path / "q.pt"), "--check", "--val-dir", str(val),
                 "--out", str(tmp_path / "int.pt")] + common) == 0
    check = load_with_meta(tmp_path / "int.pt")[1]["check"]
    assert check["images"] == 12 and check["fq_accuracy"] == pytest.approx(expect)
    capsys.readouterr()
    assert main(["eval", "--int-model", str(tmp_path / "int.pt"), "--val-dir", str(val)] + common) == 0
    assert f"top-1 {check['int_accuracy']:.2f} %" in capsys.readouterr().out


@pytest.mark.slow
def test_real_folder_calibration_and_qat_on_user_model(user_module, tmp_path, capsys):
    spec = f"{user_module}:tiny"
    val = write_folder(tmp_path / "val", ["w", "x", "y", "z"], per_class=2)
    common = ["--no-progress", "--device", "cpu"]
    assert main(["quantize", "--model", spec, "--data", "real", "--calib-dir", str(val), "--method", "qdrop",
                 "--iters", "2", "--num", "6", "--out", str(tmp_path / "q.pt")] + common) == 0
    assert _meta(tmp_path / "q.pt")["num_samples"] == 6 and "accuracy" not in _meta(tmp_path / "q.pt")
    assert "pass --val-dir" in capsys.readouterr().out
    assert main(["qat", "--method", "zaq", "--model", spec, "--epochs", "1", "--iters-per-epoch", "2",
                 "--train-batch-size", "4", "--val-dir", str(val), "--out", str(tmp_path / "qat.pt")] + common) == 0
    meta = _meta(tmp_path / "qat.pt")
    assert meta["model"] == spec and 0 <= meta["accuracy"] <= 100 and meta["top5"] == 100.0


def test_unsupported_layers_are_named_and_the_rest_runs(user_module, tmp_path, capsys):
    from zsq_engine.models import get_model
    from zsq_engine.recon import reconstruct_model

    val = write_folder(tmp_path / "val", ["w", "x", "y", "z"], per_class=2)
    rc = main(["convert", "--model", f"{user_module}:tiny_gelu", "--calib-dir", str(val), "--calib-images", "4",
               "--check", "--val-dir", str(val), "--out", str(tmp_path / "int.pt"), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1 and "stem.2" in captured.err and "GELU" in captured.err
    assert "fake-quant model (W8A8)" in captured.out and "top-1" in captured.out
    assert not (tmp_path / "int.pt").exists()

    images = torch.randn(8, 3, 16, 16)
    with pytest.warns(UserWarning, match="skips unit 'twice'"):
        result = reconstruct_model(get_model(f"{user_module}:shared"), images, 4, 4, iters=2, num=8,
                                   show_progress=False)
    assert [s["name"] for s in result.meta["skipped_units"]] == ["twice"]
    assert "called 2 times" in result.meta["skipped_units"][0]["reason"]
    assert [u["name"] for u in result.units] == ["stem", "fc"]
