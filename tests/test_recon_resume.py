"""Resumable block reconstruction: a run stopped after some units continues at the next unit
and ends with exactly the model of an uninterrupted run."""
from __future__ import annotations

import pytest
import torch

from _support.data import write_folder
from zsq_engine.cli import main
from zsq_engine.models import get_model
from zsq_engine.recon import reconstruct_model

pytestmark = pytest.mark.slow  # reconstruction runs, one of them with two processes


class Killed(Exception):
    pass


def _stop_after(n):
    def hook(done, total):
        if done == n:
            raise Killed
    return hook


def _run(model, images, **kw):
    return reconstruct_model(model, images, 4, 4, method="genie", iters=6, num=16, batch_size=8, seed=3,
                             show_progress=False, **kw)


def test_resume_gives_the_uninterrupted_model(tmp_path):
    torch.manual_seed(0)
    model = get_model("fmnist_resnet", pretrained=False)
    images = torch.randn(16, 1, 28, 28)
    reference = _run(model, images)
    ckpt = tmp_path / "q.pt.ckpt"
    with pytest.raises(Killed):
        _run(model, images, checkpoint=ckpt, on_unit_done=_stop_after(2))
    assert ckpt.exists() and torch.load(ckpt, weights_only=True)["done"] == 2
    calls = []
    resumed = _run(model, images, checkpoint=ckpt, on_unit_done=lambda d, t: calls.append(d))
    n_units = len(reference.units)
    assert resumed.meta["resumed_units"] == 2 and calls == list(range(3, n_units + 1))
    ref_state, state = reference.model.state_dict(), resumed.model.state_dict()
    assert ref_state.keys() == state.keys()
    for k in ref_state:
        assert torch.equal(ref_state[k], state[k]), k
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(resumed.units) == strip(reference.units)

    # the same checkpoint is refused for another run (other seed / other images)
    with pytest.raises(ValueError, match="belongs to another run"):
        reconstruct_model(model, images, 4, 4, iters=6, num=16, batch_size=8, seed=4, show_progress=False,
                          checkpoint=ckpt)
    with pytest.raises(ValueError, match="belongs to another run"):
        _run(model, images + 1, checkpoint=ckpt)


def test_quantize_cli_resumes_a_killed_run(user_module, tmp_path, monkeypatch, capsys):
    import zsq_engine.recon as recon

    val = write_folder(tmp_path / "val", ["w", "x", "y", "z"], per_class=2)
    argv = ["quantize", "--model", f"{user_module}:tiny", "--data", "real", "--calib-dir", str(val), "--iters", "3",
            "--num", "8", "--no-progress", "--device", "cpu"]
    assert main(argv + ["--out", str(tmp_path / "ref.pt")]) == 0
    assert not (tmp_path / "ref.pt.ckpt").exists()  # removed after a finished run

    real = recon.reconstruct_model
    monkeypatch.setattr(recon, "reconstruct_model",
                        lambda *a, **kw: real(*a, on_unit_done=_stop_after(1), **kw))
    with pytest.raises(Killed):
        main(argv + ["--out", str(tmp_path / "q.pt")])
    monkeypatch.setattr(recon, "reconstruct_model", real)
    assert (tmp_path / "q.pt.ckpt").exists() and not (tmp_path / "q.pt").exists()
    assert main(argv + ["--out", str(tmp_path / "q.pt")]) == 2  # a usage error: the checkpoint of a stopped run exists
    assert "pass --resume" in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path / "q.pt"), "--resume"]) == 0
    assert "resumed: the first 1 units" in capsys.readouterr().out
    ref = torch.load(tmp_path / "ref.pt", weights_only=True)["state_dict"]
    got = torch.load(tmp_path / "q.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.subprocess
def test_two_process_gloo_reconstruction_equals_single(user_module, tmp_path):
    """torchrun with 2 processes (gloo) shares each batch; the model equals the 1-process one up to
    float summation order: same integer weights (at most a rare flip at a rounding boundary) and
    logits within float tolerance (learned scales differ in the last float bits)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    val = write_folder(tmp_path / "val", ["w", "x", "y", "z"], per_class=3)
    args = ["quantize", "--model", f"{user_module}:tiny", "--data", "real", "--calib-dir", str(val), "--iters", "8",
            "--no-progress", "--device", "cpu", "--method", "genie", "--seed", "2"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # (no --num: torchrun's own parser takes it for an abbreviation of --numa-binding; the folder's
    # 12 images are all used anyway)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "zsq_engine.cli", *args, "--out", str(tmp_path / "dist.pt")]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args + ["--out", str(tmp_path / "single.pt")]) == 0
    finally:
        torch.set_num_threads(threads)
    dist = torch.load(tmp_path / "dist.pt", weights_only=True)
    single = torch.load(tmp_path / "single.pt", weights_only=True)
    assert dist["meta"]["world_size"] == 2 and single["meta"]["world_size"] == 1
    from zsq_engine.recon import load_quantized

    q_dist, _ = load_quantized(tmp_path / "dist.pt")
    q_single, _ = load_quantized(tmp_path / "single.pt")
    sd, ss = dist["state_dict"], single["state_dict"]
    codes_same = codes_total = 0
    for k in ss:
        if k.endswith("weight_quantizer.scale"):
            w = k[: -len("_quantizer.scale")]
            shape = (-1,) + (1,) * (ss[w].dim() - 1)
            # learned scales agree to float rounding; the integer codes (weight / scale) must agree
            assert torch.allclose(sd[k], ss[k], rtol=1e-5, atol=0), k
            codes_same += int((torch.round(sd[w] / sd[k].view(shape)) == torch.round(ss[w] / ss[k].view(shape))).sum())
            codes_total += ss[w].numel()
    assert codes_total > 1000 and codes_same >= 0.995 * codes_total, f"{codes_total - codes_same} codes differ"
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        ys, yd = q_single(x), q_dist(x)
    assert torch.allclose(ys, yd, rtol=0, atol=1e-3 * float(ys.abs().max())), float((ys - yd).abs().max())
