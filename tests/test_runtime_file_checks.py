"""Integer-model files are validated on load: a damaged or crafted field is a clear error, not
a model that runs wrong, and absurd sizes are refused before anything is allocated."""
import copy
import math

import pytest
import torch

from zsq_engine.cli import main
from zsq_engine.utils import FileFormatError
from zsq_engine.models import get_model
from zsq_engine.quant import naive_ptq
from zsq_engine.runtime import IntModel, convert, save
from zsq_engine.runtime.io import load_with_meta


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(path, raw payload) of a W4A4 integer Fashion-MNIST ResNet (random calibration: shapes,
    not accuracy, matter here)."""
    torch.manual_seed(0)
    q = naive_ptq(get_model("fmnist_resnet", pretrained=True), [torch.randn(16, 1, 28, 28)], 4, 4, progress=False)
    path = tmp_path_factory.mktemp("int") / "int.pt"
    save(convert(q), path, meta={"model": "fmnist_resnet"})
    return path, torch.load(path, weights_only=True)


def _layer(raw, key):
    return next(e for e in raw["architecture"]["layers"] if e["key"] == key)


def _grid_layer(raw):
    return next(e for e in raw["architecture"]["layers"] if e["config"]["input"] is not None)


def _set_input_grid(field, value):
    def edit(raw):
        _grid_layer(raw)["config"]["input"][field] = value
    return edit


def _set_quantize_step(field, value):
    def edit(raw):
        next(s for s in raw["architecture"]["program"] if s["op"] == "quantize")["q"][field] = value
    return edit


def _weight_scale(value):
    def edit(raw):
        key = raw["architecture"]["layers"][1]["key"]
        raw["state_dict"][f"layers.{key}.weight_scale"][3] = value
    return edit


def _huge_out_channels(raw):
    _layer(raw, "conv1")["config"]["out_channels"] = 10 ** 9


def _wrong_kernel(raw):
    _layer(raw, "conv1")["config"]["kernel_size"] = [5, 5]


def _unknown_type(raw):
    _layer(raw, "conv1")["type"] = "IntSomething"


def _dangling_slot(raw):
    raw["architecture"]["program"][1]["in"] = "nowhere:f"


def _missing_tensor(raw):
    del raw["state_dict"]["layers.conv1.weight_scale"]


def _nan_bias(raw):
    raw["state_dict"]["layers.fc.bias"][0] = float("nan")


def _wbits_mismatch(raw):
    _grid_layer(raw)["config"]["wbits"] = 8  # stored packed (int4) but claims 8 bits


CORRUPTIONS = {
    "NaN activation scale": (_set_input_grid("scale", math.nan), "scale must be a finite number > 0"),
    "zero activation scale": (_set_input_grid("scale", 0.0), "scale must be a finite number > 0"),
    "negative requantize scale": (_set_quantize_step("scale", -0.5), "scale must be a finite number > 0"),
    "qmin > qmax": (_set_input_grid("qmin", 20), "not ordered"),
    "zero point outside range": (_set_input_grid("zero_point", 99), "zero_point"),
    "NaN weight scale": (_weight_scale(math.nan), "NaN or infinite"),
    "inf weight scale": (_weight_scale(math.inf), "NaN or infinite"),
    "NaN bias": (_nan_bias, "NaN or infinite"),
    "out_channels = 1e9": (_huge_out_channels, "geometry needs (1000000000"),
    "kernel size vs stored weight": (_wrong_kernel, "geometry needs"),
    "unknown layer type": (_unknown_type, "unknown type"),
    "program reads an unwritten slot": (_dangling_slot, "which no earlier step writes"),
    "missing tensor": (_missing_tensor, "is missing"),
    "packed flag vs bits": (_wbits_mismatch, "packed"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_fields_are_refused_on_load(case, saved, tmp_path, monkeypatch):
    path, raw = saved
    edit, needle = CORRUPTIONS[case]
    bad = copy.deepcopy(raw)
    edit(bad)
    torch.save(bad, tmp_path / "bad.pt")

    def no_build(arch):  # the checks must come before any layer (and its buffers) is built
        raise AssertionError("the model was built from a file that fails the checks")

    monkeypatch.setattr(IntModel, "from_architecture", staticmethod(no_build))
    with pytest.raises(FileFormatError, match="damaged integer model") as e:
        load_with_meta(tmp_path / "bad.pt")
    assert needle in str(e.value), str(e.value)


def test_the_original_file_still_loads_and_runs(saved):
    path, _ = saved
    model, meta = load_with_meta(path)
    assert meta["model"] == "fmnist_resnet"
    assert torch.isfinite(model(torch.randn(2, 1, 28, 28))).all()


def test_negative_and_zero_weight_scales_are_allowed(saved, tmp_path):
    """A folded BatchNorm with gamma <= 0 makes weight scales zero or negative: not corruption."""
    _, raw = saved
    ok = copy.deepcopy(raw)
    key = ok["architecture"]["layers"][1]["key"]
    ok["state_dict"][f"layers.{key}.weight_scale"][:2] = torch.tensor([-0.01, 0.0])
    torch.save(ok, tmp_path / "ok.pt")
    model, _ = load_with_meta(tmp_path / "ok.pt")
    assert torch.isfinite(model(torch.randn(1, 1, 28, 28))).all()


def test_cli_reports_a_corrupt_integer_model_in_one_line(saved, tmp_path, capsys):
    _, raw = saved
    bad = copy.deepcopy(raw)
    _set_input_grid("scale", math.nan)(bad)
    torch.save(bad, tmp_path / "bad.pt")
    assert main(["bench", "--int-model", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot use --int-model") and "\n" not in err and "scale must be" in err
    assert not (tmp_path / "b").exists()
