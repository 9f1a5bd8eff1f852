"""The ``zsq`` error policy: bad files, bad arguments and bad output locations end in one line
``error: <what> (<where>): <why>; <what to do>`` with exit code 1 (a failure) or 2 (a wrong
command line), before any expensive work, and nothing is written or changed.

The expensive functions (synthesis, reconstruction, QAT, conversion) are replaced by ones that
fail the test if called, so every case here also proves the check came first; the bad files
are made here (garbage, truncated, empty, text, wrong kind)."""
import os
import random

import pytest
import torch

from zsq_engine.cli import main
from zsq_engine.commands import guard

from _support.data import needs_fmnist


class ExpensiveWorkStarted(AssertionError):
    pass


class NotAllowed:
    """A class a weights-only load refuses to rebuild (loading it would run code)."""


@pytest.fixture
def no_expensive_work(monkeypatch):
    """Any call of the expensive entry points fails the test."""
    import zsq_engine.qat
    import zsq_engine.recon
    import zsq_engine.runtime
    import zsq_engine.synth

    def boom(*a, **k):
        raise ExpensiveWorkStarted("the expensive part started before the checks failed")

    for module, name in ((zsq_engine.synth, "synthesize"), (zsq_engine.recon, "reconstruct_model"),
                         (zsq_engine.qat, "train_qat"), (zsq_engine.runtime, "convert")):
        monkeypatch.setattr(module, name, boom)


def _synth_file(path, model="fmnist_resnet", n=4):
    torch.save({"images": torch.randn(n, 1, 28, 28), "labels": torch.arange(n) % 10,
                "meta": {"model": model, "method": "hast"}}, path)
    return path


def make_bad_files(folder):
    """One file of each bad kind; returns {kind: path}."""
    rng = random.Random(0)
    _synth_file(folder / "whole.pt")
    whole = (folder / "whole.pt").read_bytes()
    files = {"garbage": rng.randbytes(400), "truncated": whole[: len(whole) // 2], "empty": b"",
             "text": b"images,labels\n1,2\n"}
    out = {}
    for kind, data in files.items():
        (folder / f"{kind}.pt").write_bytes(data)
        out[kind] = folder / f"{kind}.pt"
    torch.save({"weight": torch.zeros(3)}, folder / "wrong_kind.pt")  # a torch file, but no zsq file
    out["wrong_kind"] = folder / "wrong_kind.pt"
    (folder / "whole.pt").unlink()
    return out


def snapshot(folder):
    """Every file under ``folder`` with its bytes and modification time."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "weights_only" not in err, err
    for n in needles:
        assert n in lines[0], (n, err)


# ---------------------------------------------------------------------- bad files

FILE_ARGS = {
    "quantize --data": ["quantize", "--data", "{f}", "--out", "{o}/q.pt"],
    "convert --checkpoint": ["convert", "--checkpoint", "{f}", "--out", "{o}/int.pt"],
    "convert --weights": ["convert", "--model", "fmnist_resnet", "--weights", "{f}", "--out", "{o}/int.pt"],
    "bench --int-model": ["bench", "--int-model", "{f}", "--out", "{o}/bench"],
    "qat --pool": ["qat", "--method", "hast", "--pool", "{f}", "--out", "{o}/q.pt"],
    "qat --resume --checkpoint": ["qat", "--method", "gdfq", "--resume", "--checkpoint", "{f}", "--out", "{o}/q.pt"],
    "synthesize --out (existing)": ["synthesize", "--out", "{f}", "--num", "4"],
}


@pytest.mark.slow
@needs_fmnist
@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "text", "wrong_kind"])
@pytest.mark.parametrize("command", sorted(FILE_ARGS))
def test_bad_files_give_one_line_and_change_nothing(command, kind, tmp_path, capsys, no_expensive_work):
    bad = make_bad_files(tmp_path)[kind]
    before = snapshot(tmp_path)
    argv = [a.format(f=bad, o=tmp_path) for a in FILE_ARGS[command]] + ["--no-progress", "--device", "cpu"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    arg = command.split()[1] if "synthesize" not in command else "--out"
    assert_one_line_error(err, arg, bad.name)
    if kind == "empty":
        assert "empty" in err
    assert snapshot(tmp_path) == before  # nothing written, nothing changed


def test_torch_refusal_of_pickled_objects_is_one_line_without_unsafe_advice(tmp_path, capsys):
    torch.save({"images": NotAllowed(), "labels": None, "meta": {}}, tmp_path / "obj.pt")
    assert main(["convert", "--checkpoint", str(tmp_path / "obj.pt"), "--out", str(tmp_path / "i.pt")]) == 1
    err = capsys.readouterr().err
    assert_one_line_error(err, "--checkpoint", "weights-only load refuses", "nothing from it was run")


def test_integer_model_as_checkpoint_and_fake_quant_model_as_integer_model(tmp_path, capsys):
    """Files of the other kind say which kind they are and what to do."""
    torch.save({"format": "zsq-int-model", "version": 1, "architecture": {}, "state_dict": {}, "meta": {}},
               tmp_path / "int.pt")
    assert main(["convert", "--checkpoint", str(tmp_path / "int.pt"), "--out", str(tmp_path / "x.pt")]) == 1
    assert_one_line_error(capsys.readouterr().err, "--checkpoint", "already an integer model")
    torch.save({"format": 1, "state_dict": {}, "meta": {"wbits": 4}}, tmp_path / "fq.pt")
    assert main(["convert", "--checkpoint", str(tmp_path / "fq.pt"), "--out", str(tmp_path / "x.pt")]) == 1
    assert_one_line_error(capsys.readouterr().err, "--checkpoint", "without model, abits")  # no KeyError: 'model'
    assert main(["bench", "--int-model", str(tmp_path / "fq.pt"), "--out", str(tmp_path / "b")]) == 1
    assert_one_line_error(capsys.readouterr().err, "--int-model", "fake-quant model", "zsq convert")
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------------- outputs

@needs_fmnist
def test_outputs_are_never_overwritten_without_overwrite_and_never_an_input(tmp_path, capsys, no_expensive_work):
    data = _synth_file(tmp_path / "synth.pt")
    ckpt = tmp_path / "q.pt"
    ckpt.write_bytes(b"a fake-quant model made hours ago")
    existing = tmp_path / "existing.pt"
    existing.write_bytes(b"results of another run")
    before = snapshot(tmp_path)
    cases = [
        (["quantize", "--data", str(data), "--out", str(data)], "names an input"),
        (["quantize", "--data", str(data), "--out", str(data), "--overwrite"], "names an input"),
        (["convert", "--checkpoint", str(ckpt), "--out", str(ckpt), "--overwrite"], "names an input"),
        (["convert", "--model", "fmnist_resnet", "--weights", str(existing), "--out", str(existing), "--overwrite"],
         "names an input"),
        (["qat", "--method", "hast", "--pool", str(data), "--out", str(data), "--overwrite"], "names an input"),
        (["quantize", "--data", str(data), "--out", str(existing)], "already exists"),
        (["convert", "--checkpoint", str(ckpt), "--out", str(existing)], "already exists"),
        (["qat", "--method", "gdfq", "--out", str(existing)], "already exists"),
        (["quantize", "--data", str(data), "--out", str(tmp_path)], "is a folder"),
    ]
    for argv, needle in cases:
        assert main(argv + ["--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert_one_line_error(err, needle)
        if needle == "already exists":
            assert "--overwrite" in err
    assert snapshot(tmp_path) == before


def test_output_folders_of_demo_and_bench_are_protected(tmp_path, capsys, no_expensive_work):
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "bench.json").write_text("{}")
    before = snapshot(tmp_path)
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "--out", "results.json", "--overwrite")
    assert main(["bench", "--out", str(tmp_path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "--out", "bench.json", "--overwrite")
    assert main(["demo", "--out", str(tmp_path / "results.json")]) == 2  # a file where a folder belongs
    assert_one_line_error(capsys.readouterr().err, "--out", "a folder is expected")
    assert snapshot(tmp_path) == before


@needs_fmnist
def test_output_locations_checked_before_the_work(tmp_path, capsys, monkeypatch, no_expensive_work):
    data = _synth_file(tmp_path / "synth.pt")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    under_file = str(blocker / "sub" / "q.pt")
    for argv in (["quantize", "--data", str(data), "--out", under_file],
                 ["qat", "--method", "gdfq", "--out", under_file],
                 ["convert", "--model", "fmnist_resnet", "--out", under_file],
                 ["synthesize", "--out", under_file]):
        assert main(argv + ["--no-progress"]) == 1
        assert_one_line_error(capsys.readouterr().err, "a_file is a file, not a folder")
    # a read-only folder (simulated: the tests may run as root, who can write anywhere)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(guard.os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    for argv in (["quantize", "--data", str(data), "--out", str(locked / "q.pt")],
                 ["qat", "--method", "gdfq", "--out", str(locked / "q.pt")],
                 ["synthesize", "--out", str(tmp_path / "s.pt"), "--preview", str(locked / "p.png")],
                 ["demo", "--out", str(locked)]):
        assert main(argv + ["--no-progress"]) == 1, argv
        assert_one_line_error(capsys.readouterr().err, "not writable")
    assert not list(locked.iterdir()) and not (tmp_path / "s.pt").exists()


@needs_fmnist
@pytest.mark.parametrize("argv,needle,code", [
    (["quantize", "--data", "{data}", "--batch-size", "0"], "--batch-size (0)", 2),
    (["quantize", "--data", "{data}", "--data-dir", "{tmp}/nonexistent"], "--data-dir", 1),
    (["quantize", "--data", "{data}", "--wbits", "1"], "--wbits", 2),
    (["quantize", "--data", "real", "--model", "resnet18"], "--data real needs real images", 2),
    (["qat", "--method", "gdfq", "--warmup-steps", "-1"], "--warmup-steps", 2),
    (["qat", "--method", "gdfq", "--lr", "0"], "--lr", 2),
    (["qat", "--method", "gdfq", "--data-dir", "{tmp}/nonexistent"], "--data-dir", 1),
    (["synthesize", "--method", "zeroq", "--batch-size", "1"], "--batch-size", 2),
    (["synthesize", "--preview", "{tmp}/p.jpg"], ".png", 2),
    (["convert", "--model", "fmnist_resnet", "--first-last-bits", "12"], "--first-last-bits", 2),
    (["convert", "--model", "resnet18", "--check"], "--check needs evaluation images", 2),
    (["eval", "--model", "resnet18"], "--val-dir is required", 2),
    (["eval", "--bits", "W4A9"], "--bits", 2),
    (["quantize", "--data", "{data}", "--device", "tpu:0"], "--device", 2),
])
def test_bad_arguments_before_the_work(argv, needle, code, tmp_path, capsys, no_expensive_work):
    data = _synth_file(tmp_path / "synth.pt")
    argv = [a.format(data=data, tmp=tmp_path) for a in argv]
    if argv[0] in ("quantize", "qat", "convert", "synthesize") and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out.pt")]
    before = snapshot(tmp_path)
    assert main(argv + ["--no-progress"]) == code
    out, err = capsys.readouterr()
    assert_one_line_error(err, needle)
    assert out == ""  # not even a phase line: nothing started
    assert snapshot(tmp_path) == before


def test_qat_resume_needs_its_checkpoint_and_a_fresh_run_keeps_an_old_one(tmp_path, capsys, no_expensive_work):
    out = tmp_path / "q.pt"
    assert main(["qat", "--method", "gdfq", "--out", str(out), "--resume", "--checkpoint",
                 str(tmp_path / "missing.ckpt")]) == 1
    assert_one_line_error(capsys.readouterr().err, "--checkpoint", "missing.ckpt", "does not exist")
    old = tmp_path / "q.pt.ckpt"  # the default checkpoint of --out q.pt
    old.write_bytes(b"an earlier run")
    assert main(["qat", "--method", "gdfq", "--out", str(out)]) == 2
    assert_one_line_error(capsys.readouterr().err, "q.pt.ckpt", "--resume")
    assert old.read_bytes() == b"an earlier run" and not out.exists()


@needs_fmnist
def test_convert_refuses_flags_a_checkpoint_would_ignore(tmp_path, capsys, no_expensive_work):
    ckpt = tmp_path / "q.pt"
    ckpt.write_bytes(b"x")
    for flags in (["--wbits", "8"], ["--abits", "4"], ["--first-last-bits", "8"], ["--calib-images", "64"],
                  ["--model", "fmnist_resnet"], ["--weights", str(ckpt)]):
        assert main(["convert", "--checkpoint", str(ckpt), "--out", str(tmp_path / "i.pt"), *flags]) == 2
        assert_one_line_error(capsys.readouterr().err, "would be ignored", flags[0])


# ---------------------------------------------------------------------- the CLI itself

def test_debug_shows_the_traceback_instead(tmp_path, capsys):
    bad = make_bad_files(tmp_path)["garbage"]
    argv = ["convert", "--checkpoint", str(bad), "--out", str(tmp_path / "i.pt")]
    assert main(argv) == 1
    with pytest.raises(guard.CommandError, match="--checkpoint"):
        main(["--debug", *argv])
    with pytest.raises(guard.CommandError):
        main([*argv, "--debug"])  # also accepted after the command name


def test_version_and_exit_codes_in_help(capsys):
    from zsq_engine import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"zsq_engine {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--debug" in text and "exit codes" in text and "--overwrite" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_forced_backend_that_cannot_run_is_one_usage_line(tmp_path, capsys, monkeypatch, no_expensive_work):
    data = _synth_file(tmp_path / "synth.pt")
    monkeypatch.setenv("ZSQ_BACKEND", "cuda")
    assert main(["quantize", "--data", str(data), "--out", str(tmp_path / "q.pt")]) == 2
    assert_one_line_error(capsys.readouterr().err, "ZSQ_BACKEND=cuda", "unset ZSQ_BACKEND")
    monkeypatch.setenv("ZSQ_BACKEND", "fastest")
    assert main(["synthesize", "--out", str(tmp_path / "s.pt")]) == 2
    assert_one_line_error(capsys.readouterr().err, "ZSQ_BACKEND", "fastest", "expected one of")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth.pt"]


def test_unexpected_library_errors_are_one_line_too(tmp_path, capsys, monkeypatch):
    """A failure nobody anticipated still prints one line (and points at --debug)."""
    import zsq_engine.commands.info as info

    def broken(args):
        raise RuntimeError("something deep\nwent wrong")

    monkeypatch.setattr(info, "collect", lambda: broken(None))
    assert main(["info"]) == 1
    assert_one_line_error(capsys.readouterr().err, "RuntimeError", "something deep went wrong", "--debug")
