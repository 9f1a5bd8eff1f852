"""Generator-based zero-shot QAT (zsq_engine.qat): losses against materialised references,
gradient isolation, frozen teacher, bit-exact resume, clear errors.

Everything here runs on a tiny random ResNet (fast); tests/test_qat_improvement.py checks that
short runs improve the committed Fashion-MNIST model.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from zsq_engine.models.fmnist_resnet import FmnistResNet
from zsq_engine.qat import (QATTrainer, channel_attention, channel_relation, feature_alignment,
                            kd_kl, make_config, relation_loss, spatial_relation, train_qat)
from zsq_engine.qat.taps import FeatureTaps, block_names
from zsq_engine.qat.teacher import NarrowAwareConv2d, fast_frozen_copy

pytestmark = pytest.mark.slow  # most tests train a generator and a student for a few steps

SHAPE = (1, 28, 28)


def tiny_teacher(seed=0):
    torch.manual_seed(seed)
    model = FmnistResNet(widths=(4, 8, 8))
    # non-trivial BN running statistics, as a trained model has
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.randn(16, *SHAPE))
    return model.eval()


TINY = dict(epochs=2, iters_per_epoch=3, batch_size=8, calib_batches=1, gen_warmup_iters=2, log_every=2,
            pool_size=8, pool_batch=8, pool_iters=2)


def tiny_trainer(method, teacher=None, **kw):
    cfg = {**TINY, **kw}
    if method == "hast" and "pool" not in cfg:
        cfg["pool"] = (torch.randn(16, *SHAPE), torch.randint(0, 10, (16,)))
    return QATTrainer(teacher or tiny_teacher(), method, 4, 4, input_shape=SHAPE, num_classes=10, **cfg)


# ----------------------------------------------------------------------------- losses
def naive_spatial_relation(f):
    """The HW x HW attention matrix, materialised, written out with explicit loops over images."""
    n, c, h, w = f.shape
    out = []
    for i in range(n):
        u = f[i].reshape(c, h * w)
        u = u / u.norm(dim=0, keepdim=True).clamp_min(1e-12)
        energy = u.t() @ u                          # [HW, HW]
        attn = torch.exp(energy - energy.max(dim=1, keepdim=True).values)
        attn = attn / attn.sum(dim=1, keepdim=True)
        out.append(0.1 * (u @ attn.t()) + u)
    return torch.stack(out)


def naive_channel_relation(f):
    n, c, h, w = f.shape
    out = []
    for i in range(n):
        u = f[i].reshape(c, h * w)
        u = u / u.norm(dim=0, keepdim=True).clamp_min(1e-12)
        energy = u @ u.t()
        energy = energy.max(dim=1, keepdim=True).values - energy
        attn = torch.softmax(energy, dim=1)
        out.append(0.1 * (attn @ u) + u)
    return torch.stack(out)


@pytest.mark.parametrize("impl", ["sdpa", "chunked", "auto"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 8, 1, 1), (1, 4, 9, 9)])
def test_spatial_relation_matches_materialised(impl, shape):
    f = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    got = spatial_relation(f, impl, chunk_rows=4)
    ref = naive_spatial_relation(f)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    w = torch.randn_like(ref)
    g_got, = torch.autograd.grad((got * w).sum(), f)
    g_ref, = torch.autograd.grad((ref * w).sum(), f)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-9, atol=1e-11)


def test_channel_relation_and_relation_loss_match_naive():
    fs, ft = torch.randn(2, 6, 4, 5), torch.randn(2, 6, 4, 5)
    torch.testing.assert_close(channel_relation(fs), naive_channel_relation(fs))
    want = (naive_spatial_relation(fs) - naive_spatial_relation(ft)).abs().mean() + \
        (naive_channel_relation(fs) - naive_channel_relation(ft)).abs().mean()
    torch.testing.assert_close(relation_loss([fs], [ft]), want)
    torch.testing.assert_close(relation_loss([fs, fs], [ft, ft]), 2 * want)
    assert float(relation_loss([fs], [fs])) == 0.0


def test_kd_kl_and_feature_alignment_formulas():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    T = 4.0
    p_t = torch.softmax(t / T, 1)
    want = (p_t * (p_t.log() - torch.log_softmax(s / T, 1))).sum(1).mean() * T * T
    torch.testing.assert_close(kd_kl(s, t, T), want)
    fs, ft = torch.rand(3, 4, 5, 5), torch.rand(3, 4, 5, 5)
    a = fs.pow(2).mean((2, 3))
    a = a / a.norm(dim=1, keepdim=True)
    torch.testing.assert_close(channel_attention(fs), a)
    b = ft.pow(2).mean((2, 3))
    b = b / b.norm(dim=1, keepdim=True)
    torch.testing.assert_close(feature_alignment([fs], [ft]), ((a - b) ** 2).mean())


def test_loss_argument_errors():
    with pytest.raises(ValueError, match="impl"):
        spatial_relation(torch.randn(1, 2, 3, 3), "flash")
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        spatial_relation(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="temperature"):
        kd_kl(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="shape"):
        relation_loss([torch.randn(1, 2, 3, 3)], [torch.randn(1, 2, 4, 4)])


# ----------------------------------------------------------------------------- gradients
def _snapshot(params):
    return [p.detach().clone() for p in params]


def _changed(before, params):
    return any(not torch.equal(b, p.detach()) for b, p in zip(before, params))


@pytest.mark.parametrize("method", ["gdfq", "zaq"])
def test_generator_and_student_steps_are_isolated(method):
    teacher = tiny_teacher()
    teacher_state = copy.deepcopy(teacher.state_dict())
    tr = tiny_trainer(method, teacher, gen_warmup_iters=0)
    try:
        tr.prepare()
        gen_params = list(tr.generator.parameters())
        stu_params = list(tr.student.parameters())
        # generator step: only the generator moves, nobody else collects a gradient
        g0, s0 = _snapshot(gen_params), _snapshot(stu_params)
        tr.generator_step()
        assert _changed(g0, gen_params)
        assert not _changed(s0, stu_params)
        assert all(p.grad is None for p in stu_params)
        # student step: the generator gets no gradient and does not move
        g1, s1 = _snapshot(gen_params), _snapshot(stu_params)
        grads_seen = []
        hooks = [p.register_hook(lambda g: grads_seen.append(g)) for p in gen_params]
        tr.student_step()
        for h in hooks:
            h.remove()
        assert grads_seen == []
        assert all(p.grad is None for p in gen_params)
        assert not _changed(g1, gen_params)
        assert _changed(s1, stu_params)
        # the teacher (and the copy the method runs) stays frozen: no grads, eval mode, same values
        for model in (teacher, tr.method.teacher):
            assert all(not p.requires_grad and p.grad is None for p in model.parameters())
            assert not any(m.training for m in model.modules())
        for k, v in teacher.state_dict().items():
            assert torch.equal(v, teacher_state[k]), k
    finally:
        tr.close()


@pytest.mark.parametrize("method", ["gdfq", "zaq"])
def test_student_step_batch_follows_the_methods_code(method):
    """GDFQ (as its code) trains the student on the batch the generator step just made, with
    that step's teacher logits: no second generator or teacher forward. ZAQ's student steps draw
    their own batches. Without a generator step in between, GDFQ draws afresh too."""
    teacher = tiny_teacher()
    tr = tiny_trainer(method, teacher, gen_warmup_iters=0)
    try:
        tr.prepare()
        generated, teacher_inputs, student_inputs = [], [], []
        hooks = [tr.generator.register_forward_hook(lambda m, i, o: generated.append(o.detach().clone())),
                 teacher.register_forward_pre_hook(lambda m, i: teacher_inputs.append(i[0].detach().clone())),
                 tr.student.register_forward_pre_hook(lambda m, i: student_inputs.append(i[0].detach().clone()))]
        tr.generator_step()
        n_gen, n_teacher = len(generated), len(teacher_inputs)
        tr.student_step()
        if method == "gdfq":
            assert (len(generated), len(teacher_inputs)) == (n_gen, n_teacher) == (1, 1)
            assert torch.equal(student_inputs[-1], generated[0])
        else:
            assert len(generated) == n_gen + 1
            assert torch.equal(student_inputs[-1], generated[-1])
            assert not torch.equal(generated[-1], generated[0])
        before = len(generated)
        tr.student_step()
        assert len(generated) == before + 1 and torch.equal(student_inputs[-1], generated[-1])
        for h in hooks:
            h.remove()
    finally:
        tr.close()


def test_gdfq_student_loss_on_the_handed_over_batch_matches_a_recomputation():
    teacher = tiny_teacher()
    tr = tiny_trainer("gdfq", teacher, gen_warmup_iters=0, ce_weight=1.0)
    try:
        tr.prepare()
        tr.generator_step()
        images, labels, t_logits = tr._handoff
        with torch.no_grad():
            assert torch.allclose(t_logits, teacher(images), atol=1e-6)
            expected = kd_kl(tr.student(images), teacher(images), tr.cfg.temperature) + \
                F.cross_entropy(tr.student(images), labels)
        got = tr.student_step()
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    finally:
        tr.close()


def test_hast_promotion_adds_the_promoted_loss():
    """With promotion the student gradient is that of L(x) + L(x + eps sign(grad_x L(x)))."""
    teacher = tiny_teacher()
    tr = tiny_trainer("hast", teacher, promote_eps=0.05)
    tr.prepare()
    x = torch.randn(6, *SHAPE)
    params = [p for p in tr.student.parameters()]
    tr.student_opt.zero_grad(set_to_none=True)
    loss = tr.method.student_backward(x, None)
    got = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    # independent: gradient of L at x and at the promoted x, summed
    tr.student_opt.zero_grad(set_to_none=True)
    xr = x.clone().requires_grad_(True)
    l1 = tr.method._loss(xr)
    gx, = torch.autograd.grad(l1, xr, retain_graph=True)
    x2 = x + 0.05 * gx.sign()
    l2 = tr.method._loss(x2)
    want = torch.autograd.grad(l1 + l2, params, allow_unused=True)
    for model in (teacher, tr.method.teacher):
        assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    tr.close()
    torch.testing.assert_close(loss, (l1 + l2).detach())
    for g, w in zip(got, want):
        torch.testing.assert_close(g, torch.zeros_like(g) if w is None else w, rtol=1e-4, atol=1e-6)
    assert all(p.requires_grad for p in teacher.parameters())  # close() gave the flags back


@pytest.mark.parametrize("method", ["gdfq", "zaq", "hast"])
def test_methods_run_the_teacher_function_with_bn_folded_where_they_can(method):
    """ZAQ and HAST get a BN-folded copy of the teacher (same logits and block outputs, no BN
    layer, the 1-channel stem through the narrow-conv GEMM); GDFQ reads BN inputs and keeps it."""
    teacher = tiny_teacher()
    tr = tiny_trainer(method, teacher)
    try:
        used = tr.method.teacher
        if method == "gdfq":
            assert used is teacher
            return
        assert used is not teacher
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in used.modules())
        assert isinstance(used.conv1, NarrowAwareConv2d)
        x = torch.randn(5, *SHAPE, dtype=torch.float64)
        ref, fast = copy.deepcopy(teacher).double(), copy.deepcopy(used).double()
        names = block_names(ref)
        with torch.no_grad(), FeatureTaps(ref, names) as rt, FeatureTaps(fast, names) as ft:
            torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-6)  # folded in fp32
            for a, b in zip(ft.features(), rt.features()):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())  # the original is untouched
    finally:
        tr.close()


def test_the_teacher_copy_leaves_the_seeded_random_stream_alone():
    """Folding builds new conv modules; their default initialisation must not shift what the seed
    drives afterwards (the generator's initial weights)."""
    teacher = tiny_teacher()
    torch.manual_seed(5)
    want = torch.rand(4)
    torch.manual_seed(5)
    fast_frozen_copy(teacher)
    assert torch.equal(torch.rand(4), want)


# ----------------------------------------------------------------------------- resume
class _Crash(Exception):
    pass


@pytest.mark.parametrize("method", ["gdfq", "zaq", "hast"])
def test_resume_reproduces_an_uninterrupted_run(method, tmp_path):
    pool = (torch.randn(16, *SHAPE), torch.randint(0, 10, (16,)))
    kw = dict(input_shape=SHAPE, num_classes=10, seed=3, **{k: v for k, v in TINY.items()})
    if method == "hast":
        kw["pool"] = pool
    straight = train_qat(tiny_teacher(), method, 4, 4, checkpoint=tmp_path / "a.ckpt", **kw)

    def crash(row):
        if row["epoch"] == 1:
            raise _Crash

    teacher = tiny_teacher()
    with pytest.raises(_Crash):
        train_qat(teacher, method, 4, 4, checkpoint=tmp_path / "b.ckpt", on_epoch_end=crash, **kw)
    assert all(p.requires_grad for p in teacher.parameters())  # flags restored even after the crash
    torch.manual_seed(12345)  # the resumed run must not depend on the caller's RNG
    resumed = train_qat(teacher, method, 4, 4, checkpoint=tmp_path / "b.ckpt", resume=True, **kw)
    assert resumed.meta["resumed_from_epoch"] == 1
    a, b = straight.student.state_dict(), resumed.student.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["student_loss"] for r in straight.history] == [r["student_loss"] for r in resumed.history]


def test_hast_synthesises_its_pool_and_checkpoints_it(tmp_path):
    result = train_qat(tiny_teacher(), "hast", 4, 4, input_shape=SHAPE, num_classes=10,
                       checkpoint=tmp_path / "h.ckpt", **{**TINY, "epochs": 1})
    ckpt = torch.load(tmp_path / "h.ckpt", weights_only=True)
    assert ckpt["pool"]["images"].shape == (8, *SHAPE) and ckpt["pool"]["labels"].shape == (8,)
    assert ckpt["epoch"] == 1 and len(result.history) == 1


# ----------------------------------------------------------------------------- errors
def test_bad_arguments_are_named(tmp_path):
    t = tiny_teacher()
    common = dict(input_shape=SHAPE, num_classes=10)
    with pytest.raises(ValueError, match="method"):
        QATTrainer(t, "gdfqq", 4, 4, **common)
    with pytest.raises(ValueError, match="wbits"):
        QATTrainer(t, "gdfq", 9, 4, **common)
    with pytest.raises(ValueError, match="preset"):
        QATTrainer(t, "gdfq", 4, 4, preset="slow", **common)
    with pytest.raises(ValueError, match="lr"):
        make_config("zaq", lr=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        make_config("zaq", batch_size=1)
    with pytest.raises(ValueError, match="calib_source"):
        make_config("hast", calib_source="pool")
    with pytest.raises(ValueError, match="unknown QAT setting"):
        make_config("hast", learning_rate=0.1)
    with pytest.raises(ValueError, match="pool"):
        QATTrainer(t, "gdfq", 4, 4, pool=(torch.randn(4, *SHAPE), None), **common)
    with pytest.raises(ValueError, match="input_shape"):
        QATTrainer(t, "gdfq", 4, 4, input_shape=(28, 28), num_classes=10)
    with pytest.raises(ValueError, match="stages"):
        QATTrainer(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                                       torch.nn.Linear(2 * 26 * 26, 10)), "zaq", 4, 4, **common)
    ckpt = tmp_path / "c.ckpt"
    train_qat(t, "gdfq", 4, 4, checkpoint=ckpt, **common, **{**TINY, "epochs": 1})
    with pytest.raises(ValueError, match="resume"):
        train_qat(t, "gdfq", 4, 4, checkpoint=ckpt, **common, **{**TINY, "epochs": 1})
    with pytest.raises(ValueError, match="other settings.*wbits"):
        train_qat(t, "gdfq", 3, 4, checkpoint=ckpt, resume=True, **common, **{**TINY, "epochs": 1})


# ----------------------------------------------------------------------------- CLI
def test_cli_end_to_end_resume_and_errors(tmp_path, capsys):
    from zsq_engine.cli import main as cli_main
    from zsq_engine.recon import load_quantized

    out = tmp_path / "z.pt"
    argv = ["qat", "--method", "zaq", "--wbits", "4", "--abits", "4", "--epochs", "1", "--iters-per-epoch", "2",
            "--train-batch-size", "4", "--eval-limit", "100", "--batch-size", "100", "--no-progress", "--out", str(out)]
    from zsq_engine.data import load_fashion_mnist

    try:
        load_fashion_mnist("test")
    except FileNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST not available: {exc}")
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert "naive-quantized start" in text and "test accuracy" in text
    model, meta = load_quantized(out)
    assert meta["method"] == "zaq" and meta["epochs"] == 1 and len(meta["history"]) == 1
    assert (tmp_path / "z.pt.ckpt").exists()
    # the finished run's checkpoint is not overwritten without --resume (exit 2: a wrong command line);
    # with it the run is complete, and its output is replaced only with --overwrite
    assert cli_main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli_main(argv + ["--resume"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(argv + ["--resume", "--overwrite"]) == 0
    for extra, msg in ((["--pool", "x.pt"], "--pool is only used by --method hast"), (["--wbits", "9"], "--wbits"),
                       (["--lr", "0"], "--lr (0.0): must be > 0")):
        assert cli_main(argv[:-1] + [str(tmp_path / "other.pt")] + extra) == 2
        assert msg in capsys.readouterr().err


# ----------------------------------------------------------------------------- mixed precision
def test_mixed_precision_plan_reaches_the_student_the_checkpoint_and_the_saved_file(tmp_path):
    from zsq_engine.quant import list_quant_layers
    from zsq_engine.recon import load_quantized, save_quantized

    from zsq_engine.models import get_model

    def teacher_model():  # a registered architecture, so that load_quantized can rebuild it
        torch.manual_seed(0)
        return get_model("fmnist_resnet", pretrained=False).eval()

    teacher = teacher_model()
    uniform = {r.name: (r.weight_bits, r.act_bits) for r in list_quant_layers(tiny_trainer("gdfq", teacher).student)}
    names = sorted(uniform)
    plan = {names[1]: (2, 8), names[2]: (8, 6)}
    kw = dict(input_shape=SHAPE, num_classes=10, seed=1, **{**TINY, "epochs": 1})
    result = train_qat(teacher, "gdfq", 4, 4, checkpoint=tmp_path / "m.ckpt", layer_bits=plan, **kw)
    got = {r.name: (r.weight_bits, r.act_bits) for r in list_quant_layers(result.student)}
    assert got == {**uniform, **plan}
    assert all(q.learnable for q in result.student.modules() if type(q).__name__ == "UniformQuantizer")
    assert result.meta["layer_bits"] == {k: list(v) for k, v in plan.items()}
    # a checkpoint of a mixed run is not resumed as a uniform one
    with pytest.raises(ValueError, match="other settings"):
        train_qat(teacher, "gdfq", 4, 4, checkpoint=tmp_path / "m.ckpt", resume=True, **kw)
    # the saved student is rebuilt with the plan and computes the same function
    save_quantized(tmp_path / "q.pt", result.student, {"model": "fmnist_resnet", **result.meta})
    loaded, _ = load_quantized(tmp_path / "q.pt")
    assert {r.name: (r.weight_bits, r.act_bits) for r in list_quant_layers(loaded)} == got
    x = torch.randn(4, *SHAPE)
    assert torch.equal(loaded(x), result.student(x))
