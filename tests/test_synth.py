"""Data synthesis (zsq_engine.synth): loss goes down, teacher untouched, swing conv and batched
augmentation, resumable + distributed output files, and the CLI. Tiny runs: the whole file
is meant to take well under a minute on 2 CPU cores."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zsq_engine.cli import main as cli_main
from zsq_engine.models import get_model
from zsq_engine.synth import genie, hast, load_output, synthesize
from zsq_engine.utils import random_resized_crop_flip

REPO = Path(__file__).resolve().parents[1]
SHAPE, CLASSES = (1, 28, 28), 10


@pytest.fixture(autouse=True)
def _one_thread():
    # the test machine's 2 cores are shared: one intra-op thread is several times faster there
    # than two that spin-wait for each other, and it keeps the runs identical to the torchrun ones
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher():
    return get_model("fmnist_resnet", pretrained=True)


@pytest.mark.slow
@pytest.mark.parametrize("method,iters", [("zeroq", 30), ("genie", 30), ("gdfq", 25)])
def test_bn_loss_drops(method, iters):
    extra = {"train_batch_size": 8} if method == "gdfq" else {}
    r = synthesize("fmnist_resnet", method, num=16, batch_size=16, iters=iters, seed=1, preset="fast", **extra)
    assert r.images.shape == (16, *SHAPE) and r.images.dtype == torch.float32
    assert torch.isfinite(r.images).all()
    if method in ("gdfq", "hast"):
        assert r.labels.shape == (16,) and r.labels.dtype == torch.int64
        assert int(r.labels.min()) >= 0 and int(r.labels.max()) < CLASSES
    else:
        assert r.labels is None
    start, end = r.meta["bn_loss_start"][0], r.meta["bn_loss_end"][0]
    assert end * 2 <= start, f"{method}: BN loss {start:.4g} -> {end:.4g}"


@pytest.mark.slow
def test_hast_bn_loss_drops_with_imagenet_hardness_weights():
    """With ImageNet's hardness weights (beta, gamma) = (0.1, 0.5) the BN term dominates and the
    BN loss falls far below even the Gaussian start (gamma < 1 also exercises p_y -> 1)."""
    r = synthesize("fmnist_resnet", "hast", num=16, batch_size=16, iters=60, seed=1, preset="fast",
                   beta=0.1, gamma=0.5)
    start, end = r.meta["bn_loss_start"][0], r.meta["bn_loss_end"][0]
    assert torch.isfinite(r.images).all()
    assert end * 5 <= start, f"BN loss {start:.4g} -> {end:.4g}"


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_hast_hardness_loss_formula_and_confident_samples(gamma):
    ce = torch.tensor([0.0, 1e-9, 0.3, 2.0, 7.0], dtype=torch.float64, requires_grad=True)
    loss = hast.hardness_loss(ce, gamma)
    p_y = torch.exp(-ce.detach()[2:])
    expected = ((1 - p_y) ** gamma * ce.detach()[2:]).sum() / 5  # the first two contribute ~0
    assert torch.allclose(loss.detach(), expected, rtol=1e-6, atol=1e-12)
    loss.backward()
    assert torch.isfinite(ce.grad).all(), ce.grad


@pytest.mark.slow
def test_hast_bn_term_keeps_statistics():
    """HAST starts from Gaussian noise, whose per-batch BN statistics are already close (the hardness
    term first pulls them away), so its BN term is judged against the same run without it."""
    kw = dict(num=16, batch_size=16, iters=40, seed=1, preset="fast")
    with_bn = synthesize("fmnist_resnet", "hast", **kw)
    without = synthesize("fmnist_resnet", "hast", bn_weight=0.0, **kw)
    assert with_bn.labels.shape == (16,) and with_bn.labels.dtype == torch.int64
    assert int(with_bn.labels.min()) >= 0 and int(with_bn.labels.max()) < CLASSES
    end, end_without = with_bn.meta["bn_loss_end"][0], without.meta["bn_loss_end"][0]
    assert end * 2 <= end_without, f"BN loss {end:.4g} with the BN term, {end_without:.4g} without"


def test_teacher_frozen_and_unchanged(teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.train()
    for method in ("genie", "hast"):
        synthesize(teacher, method, num=4, batch_size=4, iters=2, preset="fast", input_shape=SHAPE,
                   num_classes=CLASSES)
    assert teacher.training, "train/eval mode must be restored"
    teacher.eval()
    for p in teacher.parameters():
        assert p.grad is None and p.requires_grad
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed during synthesis"


def test_swing_conv_active_inside_and_restored(teacher):
    x = torch.randn(6, *SHAPE)
    with torch.no_grad():
        ref = teacher(x)
        with genie.swing_convolutions(teacher, torch.Generator().manual_seed(0)) as n_convs:
            swung = [teacher(x) for _ in range(4)]
        after = teacher(x)
    assert n_convs == 4  # two strided 3x3 convs + two strided 1x1 shortcuts
    assert any(not torch.equal(s, ref) for s in swung), "swing conv changed nothing"
    assert torch.equal(after, ref)
    synthesize(teacher, "genie", num=4, batch_size=4, iters=2, preset="fast", input_shape=SHAPE,
               num_classes=CLASSES)
    with torch.no_grad():
        assert torch.equal(teacher(x), ref)
    assert all(not m._forward_pre_hooks for m in teacher.modules())


def test_hast_augmentation_is_batched(monkeypatch, teacher):
    calls = []
    real = torch.nn.functional.grid_sample

    def counting(inp, grid, *a, **k):
        calls.append((tuple(inp.shape), tuple(grid.shape)))
        return real(inp, grid, *a, **k)

    monkeypatch.setattr(hast.F, "grid_sample", counting)
    x = torch.randn(8, *SHAPE, requires_grad=True)
    y = random_resized_crop_flip(x, generator=torch.Generator().manual_seed(3))
    assert calls == [((8, *SHAPE), (8, 28, 28, 2))]
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # every sample gets its own crop: no two outputs are the same transform of the same image
    same = torch.randn(1, *SHAPE).expand(8, -1, -1, -1)
    out = random_resized_crop_flip(same, generator=torch.Generator().manual_seed(4))
    assert len({tuple(o.flatten()[:50].tolist()) for o in out}) == 8
    calls.clear()
    synthesize(teacher, "hast", num=4, batch_size=4, iters=6, preset="fast", input_shape=SHAPE,
               num_classes=CLASSES, augment=True)
    assert len(calls) == 3 and all(c[0][0] == 4 for c in calls)  # iterations 1, 3, 5: one call each
    calls.clear()
    # the authors' code augments only large images; small ones (28x28 here) by default not at all
    synthesize(teacher, "hast", num=4, batch_size=4, iters=6, preset="fast", input_shape=SHAPE,
               num_classes=CLASSES)
    assert calls == []


class _Interrupt(Exception):
    pass


def _same_file(a: Path, b: Path):
    fa, fb = load_output(a), load_output(b)
    assert torch.equal(fa["images"], fb["images"])
    assert (fa["labels"] is None and fb["labels"] is None) or torch.equal(fa["labels"], fb["labels"])
    assert fa["meta"] == fb["meta"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["hast", "gdfq"])
def test_resume_equals_uninterrupted(tmp_path, method):
    kw = dict(num=12, batch_size=4, iters=3, seed=7, preset="fast")
    full = tmp_path / "full.pt"
    synthesize("fmnist_resnet", method, out=full, **kw)
    assert not (tmp_path / "full.pt.parts").exists()

    part = tmp_path / "resumed.pt"
    def stop_after_first(b, n):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        synthesize("fmnist_resnet", method, out=part, on_batch_done=stop_after_first, **kw)
    assert not part.exists()
    assert sorted(p.name for p in (tmp_path / "resumed.pt.parts").glob("batch_*.pt")) == ["batch_00000.pt"]

    done = []
    synthesize("fmnist_resnet", method, out=part, on_batch_done=lambda b, n: done.append(b), **kw)
    assert done == [1, 2], "finished batches must be skipped"
    assert not (tmp_path / "resumed.pt.parts").exists()
    _same_file(full, part)
    obj = torch.load(part, weights_only=True)
    assert obj["meta"]["method"] == method and obj["meta"]["num"] == 12 and obj["images"].shape == (12, *SHAPE)


def test_settings_mismatch_refuses(tmp_path):
    out = tmp_path / "s.pt"
    kw = dict(num=8, batch_size=4, seed=0, preset="fast")

    def stop(b, n):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        synthesize("fmnist_resnet", "zeroq", iters=2, out=out, on_batch_done=stop, **kw)
    with pytest.raises(ValueError, match="other settings.*iters"):
        synthesize("fmnist_resnet", "zeroq", iters=3, out=out, **kw)
    r = synthesize("fmnist_resnet", "zeroq", iters=3, out=out, overwrite=True, **kw)
    assert r.meta["settings"]["iters"] == 3 and out.exists()
    with pytest.raises(ValueError, match="already holds"):
        synthesize("fmnist_resnet", "zeroq", iters=2, out=out, **kw)


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, capsys):
    out, png = tmp_path / "cli" / "g.pt", tmp_path / "prev.png"
    rc = cli_main(["synthesize", "--model", "fmnist_resnet", "--method", "gdfq", "--num", "6", "--batch-size", "3",
                   "--iters", "2", "--preset", "fast", "--seed", "1", "--out", str(out), "--preview", str(png),
                   "--no-progress"])
    assert rc == 0
    obj = torch.load(out, weights_only=True)
    assert obj["images"].shape == (6, *SHAPE) and obj["labels"].shape == (6,)
    assert obj["meta"]["model"] == "fmnist_resnet" and obj["meta"]["preset"] == "fast"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for argv, msg in ((["--method", "nope"], "valid methods: genie"), (["--model", "nope"], "valid models:"),
                      (["--num", "0"], "--num (0): must be >= 1")):
        assert cli_main(["synthesize", "--out", str(tmp_path / "x.pt"), *argv]) == 2  # a wrong command line
        assert msg in capsys.readouterr().err


def test_cli_output_folder_not_creatable(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert cli_main(["synthesize", "--out", str(blocker / "sub" / "x.pt"), "--num", "2", "--iters", "1"]) == 1
    assert "cannot create the output folder" in capsys.readouterr().err


def test_cli_unwritable_output(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        assert cli_main(["synthesize", "--out", str(locked / "x.pt"), "--num", "2", "--iters", "1"]) == 1
        assert "not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_process_gloo_equals_single(tmp_path):
    args = ["synthesize", "--model", "fmnist_resnet", "--method", "genie", "--num-images", "20", "--batch-size", "4",
            "--iters", "3", "--preset", "fast", "--seed", "5", "--no-progress"]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    dist_out = tmp_path / "dist.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "zsq_engine.cli", *args, "--out", str(dist_out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # 5 batches shared round-robin: each process did its own share, none did all of them
    assert "rank 0/2: synthesized batches [0, 2, 4]" in proc.stderr
    assert "rank 1/2: synthesized batches [1, 3]" in proc.stderr
    single_out = tmp_path / "single.pt"
    assert cli_main([*args, "--out", str(single_out)]) == 0
    _same_file(dist_out, single_out)


def test_deferred_plateau_replays_the_same_schedule():
    """Fed in groups, the scheduler sees the same loss sequence: after every flush the learning rate
    equals that of an eager ReduceLROnPlateau stepped once per iteration."""
    from zsq_engine.synth.loop import DeferredPlateau

    losses = [5.0 - 0.1 * i for i in range(10)] + [4.2] * 30 + [1.0] + [1.5] * 25
    p_eager, p_group, p_one = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    eager = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.Adam([p_eager], lr=0.1), min_lr=1e-4, patience=4)
    opt_g, opt_1 = torch.optim.Adam([p_group], lr=0.1), torch.optim.Adam([p_one], lr=0.1)
    grouped = DeferredPlateau(opt_g, torch.device("cpu"), every=7, min_lr=1e-4, patience=4)
    single = DeferredPlateau(opt_1, torch.device("cpu"), min_lr=1e-4, patience=4)
    assert single.every == 1
    drops = 0
    for i, v in enumerate(losses):
        before = eager.optimizer.param_groups[0]["lr"]
        eager.step(v)
        drops += eager.optimizer.param_groups[0]["lr"] < before
        grouped.step(torch.tensor(v))
        single.step(torch.tensor(v))
        assert opt_1.param_groups[0]["lr"] == eager.optimizer.param_groups[0]["lr"]
        if (i + 1) % 7 == 0:
            assert opt_g.param_groups[0]["lr"] == eager.optimizer.param_groups[0]["lr"]
    grouped.flush()
    assert opt_g.param_groups[0]["lr"] == eager.optimizer.param_groups[0]["lr"]
    assert drops >= 2  # the sequence really exercises the plateau logic
    with pytest.raises(ValueError, match="every"):
        DeferredPlateau(opt_g, torch.device("cpu"), every=0)
