"""The benchmark's peers (zsq_engine.bench_peers): each one reproduces the fake-quant model before it
is timed, a peer that cannot be built is skipped with its reason, and the rows have one schema.
Small random-weight nets at 16x16 (a compile takes seconds); no timing assertions."""
import json
import math
import sys

import pytest
import torch
from torch import nn

from zsq_engine.bench_peers import (INT8_PEERS, PEERS, Candidate, PeerUnavailable, add_peer_ratios,
                                    check_and_split, peer_candidates, skipped_rows)
from zsq_engine.quant import naive_ptq
from zsq_engine.runtime.latency import Contender

from _support.data import needs_fmnist

SHAPE = (3, 16, 16)


class TinyResNet(nn.Module):
    """conv-bn-relu stem, one residual block, global pool, classifier: what the peers fuse."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()  # one module per use, as PT2E needs
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    fp = TinyResNet()
    with torch.no_grad():  # non-trivial BN statistics, so folding matters
        for bn in (fp.bn1, fp.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
        fp.fc.weight.normal_(0.0, 1.0)
    fp.eval()
    g = torch.Generator().manual_seed(1)

    def images(n):  # per-image colour offsets: pooled features (and predictions) differ between images
        return torch.randn(n, *SHAPE, generator=g) * 0.5 + torch.randn(n, 3, 1, 1, generator=g) * 2

    calib = [images(32)]
    q = naive_ptq(fp, calib, 8, 8, progress=False, quantize_first_input=True).eval()
    return fp, q, calib, images(48)


def _sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - got).pow(2).sum().clamp_min(1e-20)))


def _outputs(contender: Contender, images: torch.Tensor, batch: int) -> torch.Tensor:
    outs = [contender.fn(contender.prepare(images[i:i + batch])) for i in range(0, images.shape[0], batch)]
    return torch.cat([torch.as_tensor(o).float() for o in outs])


@pytest.mark.slow
def test_the_reference_separates_predictions(nets):
    # otherwise top-1 agreement would be trivially 100 % (a random net predicting one class)
    fp, q, _, images = nets
    with torch.no_grad():
        assert len(set(q(images).argmax(1).tolist())) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("peer", PEERS)
def test_each_peer_reproduces_the_fake_quant_model(nets, peer):
    if peer == "torchao pt2e int8":  # absent, or built for another torch: skip
        pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e",
                            reason="torchao PT2E not importable (optional extra zsq_engine[bench])")
    if peer == "onnxruntime":
        pytest.importorskip("onnxruntime", reason="onnxruntime not installed (optional extra zsq_engine[export])")
    fp, q, calib, images = nets
    torch._dynamo.reset()
    cands = peer_candidates(fp, calib, SHAPE, peers=[peer], onnx_qmodel=q, reference="fake-quant")
    timed, (status,) = check_and_split(cands, {"fake-quant": q}, images, batch=4, min_agreement=0)
    assert status.skipped is None, status.skipped
    assert timed == [status.contender] and status.contender.name == peer
    got = _outputs(status.contender, images, 4)
    with torch.no_grad():
        ref_q, ref_fp = q(images), fp(images)
    assert status.agreement == pytest.approx(float((got.argmax(1) == ref_q.argmax(1)).float().mean()) * 100)
    if peer == "fp32 torch.compile":  # the float network itself, compiled
        torch.testing.assert_close(got, ref_fp, rtol=1e-4, atol=1e-4)
        assert status.agreement >= 90.0
    elif peer == "onnxruntime":  # the same fake-quant model as a QDQ graph: only rounding-order differences
        assert _sqnr_db(ref_q, got) > 30 and status.agreement >= 90.0
    else:  # an independent int8 quantization of the same float network (its own observers and grids):
        # close to the float network; top-1 differs from zsq's grids only on the near-ties of a random net
        assert _sqnr_db(ref_fp, got) > 20 and status.agreement >= 80.0


def test_a_peer_that_disagrees_is_not_timed(nets):
    fp, q, _, images = nets

    def negated(x):  # a different network: argmax becomes argmin
        with torch.no_grad():
            return -fp(x)
    wrong = Candidate("wrong", "fp32", "fake-quant", lambda: None,
                      lambda _: Contender("wrong", "fp32", negated, lambda x: x))
    right = Candidate("fp32", "fp32", "fake-quant", lambda: None,
                      lambda _: Contender("fp32", "fp32", lambda x: fp(x).detach(), lambda x: x))
    timed, statuses = check_and_split([wrong, right], {"fake-quant": q}, images, batch=8, min_agreement=90)
    assert [c.name for c in timed] == ["fp32"]
    assert statuses[0].agreement < 20 and "below 90%" in statuses[0].skipped
    assert statuses[1].skipped is None and statuses[1].agreement >= 90


def _block_torchao(monkeypatch):
    for name in [m for m in sys.modules if m == "torchao" or m.startswith("torchao.")] + ["torchao"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import torchao...` now raises ImportError


def test_a_missing_peer_is_skipped_with_its_reason(nets, monkeypatch):
    fp, q, calib, images = nets
    _block_torchao(monkeypatch)
    cands = peer_candidates(fp, calib, SHAPE, peers=["torchao pt2e int8", "torch.ao int8"], onnx_qmodel=None,
                            reference="fake-quant")
    cands += peer_candidates(fp, None, SHAPE, peers=["onnxruntime"], onnx_qmodel=None, reference="fake-quant")
    timed, statuses = check_and_split(cands, {"fake-quant": q}, images[:8], batch=8, min_agreement=0)
    by = {s.name: s for s in statuses}
    assert [c.name for c in timed] == ["torch.ao int8"]
    assert "torchao" in by["torchao pt2e int8"].skipped and "pip install" in by["torchao pt2e int8"].skipped
    assert "fake-quant model" in by["onnxruntime"].skipped
    rows = skipped_rows(statuses, [1, 16], extra={"model": "tiny"})
    assert {(r["impl"], r["batch"]) for r in rows} == {(n, b) for n in ("torchao pt2e int8", "onnxruntime")
                                                        for b in (1, 16)}
    assert all(r["ms"] is None and r["skipped"] and r["model"] == "tiny" for r in rows)
    with pytest.raises(ValueError, match="peers must be among"):
        peer_candidates(fp, calib, SHAPE, peers=["tensorrt"])
    # a build that raises anything else is a skip too, with the exception in the reason
    boom = Candidate("boom", "W8A8", "fake-quant", lambda: 1 / 0, lambda a: a)
    with pytest.raises(PeerUnavailable, match="ZeroDivisionError"):
        boom.contender()


def test_ratios_against_fp32_and_the_fastest_int8_peer():
    def row(impl, ms, batch=1, threads=1):
        return {"model": "m", "impl": impl, "batch": batch, "threads": threads, "cuda_graph": False, "ms": ms}
    rows = [row("fp32", 30.0), row("fp32 torch.compile", 5.0), row("torch.ao int8", 10.0),
            row("torchao pt2e int8", 8.0), row("onnxruntime", None), row("zsq int W8A8", 4.0),
            row("fp32", 60.0, threads=2), row("torch.ao int8", 12.0, threads=2), row("zsq int W8A8", 24.0, threads=2)]
    add_peer_ratios(rows)
    zsq1, zsq2 = rows[5], rows[8]
    # fp32 torch.compile is faster still but is not an int8 peer; a skipped peer (ms None) is no baseline
    assert zsq1["fastest_int8_peer"] == "torchao pt2e int8" and zsq1["speedup_vs_fastest_int8_peer"] == 2.0
    assert zsq1["speedup_vs_fp32"] == 7.5
    assert zsq2["fastest_int8_peer"] == "torch.ao int8" and zsq2["speedup_vs_fastest_int8_peer"] == 0.5
    assert zsq2["speedup_vs_fp32"] == 2.5
    assert rows[4]["speedup_vs_fp32"] is None and rows[4]["speedup_vs_fastest_int8_peer"] is None
    assert set(INT8_PEERS) == {"torch.ao int8", "torchao pt2e int8", "onnxruntime"}


ROW_KEYS = {"bench", "model", "input", "impl", "precision", "batch", "threads", "cuda_graph", "ms", "images_per_s",
            "speedup_vs_fp32", "speedup_vs_torch_ao", "speedup_vs_fastest_int8_peer", "fastest_int8_peer",
            "agreement_vs_fake_quant", "agreement_reference", "skipped", "torchao", "onnxruntime", "torch", "date",
            "device"}


@pytest.mark.slow
@needs_fmnist
def test_benchmark_rows_schema_with_a_skipped_peer(monkeypatch):
    pytest.importorskip("onnxruntime")
    from benchmarks import harness
    from benchmarks.runtime import bench_cpu_model

    _block_torchao(monkeypatch)
    rows = bench_cpu_model("fmnist_resnet", (1, 28, 28), [1, 2], [1], ["w8a8"], ["torch.ao", "pt2e", "onnxruntime"],
                           harness.environment(torch.device("cpu")), calib_images=16, check_images=16,
                           warmup=1, repeats=1)
    json.dumps(rows)  # the rows go to a JSON-lines file as they are
    assert {(r["impl"], r["batch"]) for r in rows} == {(i, b) for b in (1, 2) for i in (
        "fp32", "torch.ao int8", "torchao pt2e int8", "onnxruntime", "zsq int W8A8")}
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["threads"] == 1 and r["torchao"] is None and r["input"] == [1, 28, 28]
        if r["impl"] == "torchao pt2e int8":
            assert r["ms"] is None and "torchao" in r["skipped"] and r["speedup_vs_fp32"] is None
            continue
        assert r["skipped"] is None and r["ms"] > 0 and r["agreement_vs_fake_quant"] >= 90
        assert r["speedup_vs_fp32"] > 0 and r["fastest_int8_peer"] in ("torch.ao int8", "onnxruntime")
        want = "fake-quant W8A8" if r["impl"] == "zsq int W8A8" else "fake-quant W8A8 8-bit input"
        assert r["agreement_reference"] == want


@pytest.mark.slow
@needs_fmnist
def test_zsq_bench_prints_peer_rows_and_skip_reasons(tmp_path, capsys, monkeypatch):
    from zsq_engine.cli import main

    _block_torchao(monkeypatch)
    rc = main(["bench", "--model", "fmnist_resnet", "--calib-images", "16", "--batch-sizes", "1", "--warmup", "1",
               "--repeats", "1", "--threads", "1", "--peers", "torch.ao", "pt2e", "--out", str(tmp_path),
               "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "vs fastest int8 peer" in printed and "torch.ao int8" in printed
    assert "skipped torchao pt2e int8: torchao PT2E is not importable" in printed
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [r["impl"] for r in data["rows"]] == ["fp32", "zsq int", "torch.ao int8"]
    assert [s["impl"] for s in data["skipped"]] == ["torchao pt2e int8"]
    assert all(r["agreement_vs_fake_quant"] >= 90 and r["speedup_vs_fastest_int8_peer"] > 0 for r in data["rows"])
    assert data["settings"]["versions"]["torchao"] is None
    assert main(["bench", "--model", "fmnist_resnet", "--peers", "tensorrt", "--out", str(tmp_path / "x")]) == 2
    assert "--peers" in capsys.readouterr().err


def test_logit_sqnr_matches_hand_computed_value_and_ignores_a_constant_shift():
    from zsq_engine.bench_peers import logit_sqnr_db

    ref = torch.tensor([[1.0, -1.0], [2.0, -2.0]])  # zero mean per image: signal = 1+1+4+4 = 10
    got = ref + torch.tensor([[0.1, -0.1], [0.0, 0.0]])  # noise = 0.01 + 0.01 = 0.02
    assert logit_sqnr_db(got, ref) == pytest.approx(10 * math.log10(10 / 0.02), rel=1e-6)  # float32 inputs
    assert logit_sqnr_db(ref + 5.0, ref) == float("inf")  # a per-image constant changes no prediction


def test_sqnr_gate_times_a_contender_whose_near_tied_predictions_flip():
    # Logits of a near-tied network: every image's two classes differ by 1e-3, the contender's
    # rounding noise (1e-2) flips about half the predictions while the logits stay close.
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 10, generator=g) * 10
    ref_logits = base.clone()
    ref_logits[:, 0] = ref_logits.max(1).values + 50  # class 0 or 1 on top, nearly tied
    ref_logits[:, 1] = ref_logits[:, 0] + 1e-3 * torch.sign(torch.randn(64, generator=g))
    noisy = ref_logits + 1e-2 * torch.randn(64, 10, generator=g)
    images = torch.arange(64.0).view(64, 1, 1, 1)

    def lookup(table):
        return lambda x: table[x.view(-1).long()]

    cand = Candidate("noisy", "W8A8", "ref", lambda: None,
                     lambda _: Contender("noisy", "W8A8", lookup(noisy), lambda x: x))
    timed, (status,) = check_and_split([cand], {"ref": lookup(ref_logits)}, images, batch=8, min_agreement=90)
    assert not timed and status.agreement < 90 and "SQNR" not in status.skipped
    cand = Candidate("noisy", "W8A8", "ref", lambda: None,
                     lambda _: Contender("noisy", "W8A8", lookup(noisy), lambda x: x))
    timed, (status,) = check_and_split([cand], {"ref": lookup(ref_logits)}, images, batch=8, min_agreement=90,
                                       min_sqnr_db=20)
    assert [c.name for c in timed] == ["noisy"] and status.sqnr_db > 20 and status.skipped is None
    wrong = Candidate("wrong", "W8A8", "ref", lambda: None,
                      lambda _: Contender("wrong", "W8A8", lookup(-ref_logits), lambda x: x))
    timed, (status,) = check_and_split([wrong], {"ref": lookup(ref_logits)}, images, batch=8, min_agreement=90,
                                       min_sqnr_db=20)
    assert not timed and "SQNR" in status.skipped and status.sqnr_db < 0


def test_random_benchmark_networks_get_bn_statistics_of_their_calibration_images():
    from benchmarks.runtime_models import measure_bn_statistics

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    images = [torch.randn(5, 3, 8, 8) * 3 + 1, torch.randn(7, 3, 8, 8) * 3 + 1]
    measure_bn_statistics(net, images)
    with torch.no_grad():
        pre = [net[0](x) for x in images]  # the BN input of each batch
    bn = net[1]
    assert not net.training
    # a cumulative average over the batches, each batch weighted equally (not a momentum blend)
    torch.testing.assert_close(bn.running_mean, sum(p.mean((0, 2, 3)) for p in pre) / 2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, sum(p.var((0, 2, 3), unbiased=True) for p in pre) / 2,
                               rtol=1e-4, atol=1e-5)
