"""Backend selection: forcing, fallbacks and clear errors."""
import os
import subprocess
import sys

import pytest
import torch

from zsq_engine import ops
from zsq_engine.ops import dispatch


def test_reference_always_available():
    assert "reference" in ops.available_backends()
    assert ops.backend_status("reference")[0]


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="unknown backend"):
        with ops.use_backend("tpu"):
            pass


def test_forced_unavailable_backend_is_a_clear_error():
    missing = [b for b in ops.BACKENDS if b not in ops.available_backends()]
    if not missing:
        pytest.skip("every backend is available on this machine")
    with pytest.raises(ops.BackendUnavailableError, match="not available"):
        with ops.use_backend(missing[0]):
            pass


def test_forced_reference_runs_reference(monkeypatch):
    calls = []
    real = dispatch.implementations("fq_forward")["reference"]

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setitem(dispatch._REGISTRY["fq_forward"], "reference", spy)
    with ops.use_backend("reference"):
        ops.fake_quant(torch.randn(5), 0.1, 0, 0, 15)
    assert calls == [1]


def test_forced_backend_without_kernel_falls_back_or_fails_strict(monkeypatch):
    # a fake backend entry for an op that has only a reference implementation
    monkeypatch.setattr(dispatch, "backend_status", lambda name: (True, "test"))
    with ops.use_backend("cpu"):
        with pytest.warns(RuntimeWarning, match="has no 'cpu' kernel"):
            name, _ = dispatch.select("bn_stat_loss", torch.device("cpu"))
        assert name == "reference"
    with ops.use_backend("cpu", strict=True):
        with pytest.raises(ops.BackendUnavailableError, match="strict"):
            dispatch.select("bn_stat_loss", torch.device("cpu"))


def test_forced_backend_on_wrong_device(monkeypatch):
    monkeypatch.setattr(dispatch, "backend_status", lambda name: (True, "test"))
    with ops.use_backend("cuda"):
        with pytest.raises(ops.BackendUnavailableError, match="cannot run op 'int_mm' on a cpu tensor"):
            dispatch.select("int_mm", torch.device("cpu"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_env_var_forces_backend():
    code = ("import torch; from zsq_engine.ops import dispatch;"
            "print(dispatch.select('pack_int4', torch.device('cpu'))[0])")
    env = dict(os.environ, ZSQ_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "reference"
    env["ZSQ_BACKEND"] = "bogus"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "ZSQ_BACKEND='bogus' is not a backend" in bad.stderr


def test_automatic_cpu_choice_uses_extension_when_built():
    name, _ = dispatch.select("pack_int4", torch.device("cpu"))
    expected = "cpu" if ops.backend_status("cpu")[0] else "reference"
    assert name == expected


@pytest.mark.parametrize("backend", ["reference", "cpu", "cuda", "triton"])
def test_every_backend_pack_int4_agrees(backend, device):
    """Force each dispatch branch that has a kernel and can run on this device."""
    impls = dispatch.implementations("pack_int4")
    if backend not in impls or not ops.backend_status(backend)[0] \
            or not dispatch._backend_fits_device(backend, device):
        pytest.skip(f"no runnable {backend!r} pack_int4 for {device}")
    x = torch.randint(-8, 8, (5, 9), dtype=torch.int8, device=device)
    with ops.use_backend(backend, strict=True):
        packed = ops.pack_int4(x)
        back = ops.unpack_int4(packed, 9)
    with ops.use_backend("reference"):
        assert torch.equal(packed, ops.pack_int4(x))
    assert torch.equal(back, x)
