"""Fused BN-statistics loss kernels (reference, C++ CPU, Triton through the interpreter) against
the reference formula of zsq_engine.ops.reference.bn_stats, forward and backward."""
import pytest
import torch

from zsq_engine import ops
from zsq_engine.ops import dispatch
from zsq_engine.ops.bn_stats import library as bn_ops
from zsq_engine.ops.bn_stats import reference as ref

BACKENDS = [b for b in ("reference", "cpu", "triton") if dispatch.backend_status(b)[0]]
VARIANTS = ["genie", "zeroq", "gdfq", "hast"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# fp32 loss vs fp32 reference: the kernels accumulate in a different order (and shifted)
TOL = {torch.float32: dict(rtol=2e-5, atol=1e-6), torch.float16: dict(rtol=2e-5, atol=1e-6),
       torch.bfloat16: dict(rtol=2e-5, atol=1e-6)}
# gradients are rounded to the activation dtype: one ulp of it
GRAD_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-7), torch.float16: dict(rtol=2e-3, atol=1e-6),
            torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5)}


@pytest.fixture(autouse=True)
def _small_triton_chunks(monkeypatch):
    # Force several chunks per group (and the Chan merge) on the tiny test shapes.
    if "triton" in BACKENDS:
        from zsq_engine.kernels import bn_stats as kb
        monkeypatch.setattr(kb, "BLOCK_BATCH", 32)
        monkeypatch.setattr(kb, "BLOCK_IMAGE", 16)
        monkeypatch.setattr(kb, "CHUNK_STEPS", 2)
        monkeypatch.setattr(kb, "BLOCK_GROUPS", 32)


def _shapes(variant, wide=True):
    # odd channel counts 1, 3, 7, 65; batch 1; 2-D and 4-D; layers of different shapes at once.
    # ``wide=False`` swaps the 65-channel layer for 5 channels (65 interpreted programs per launch).
    last = (1, 65, 2, 2) if wide else (1, 5, 2, 2)
    if variant == "zeroq":  # per-image statistics need H * W >= 2
        return [(2, 1, 9, 9), (1, 3, 5, 5), (3, 7, 3, 2), last]
    return [(2, 1, 9, 9), (1, 3, 5, 5), (5, 7), last]


def _layers(variant, dtype, wide=True):
    shapes = _shapes(variant, wide)
    acts = [(torch.randn(s) * 2.0 + 0.5).to(dtype) for s in shapes]
    means = [torch.randn(s[1]) for s in shapes]
    vars_ = [torch.rand(s[1]) + 0.1 for s in shapes]
    return acts, means, vars_


def _ref_loss_and_grads(acts, means, vars_, variant):
    leaves = [a.detach().clone().requires_grad_() for a in acts]
    loss = ref.bn_stat_loss(leaves, means, vars_, ref.VARIANTS[variant])
    grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), grads


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_primitives_match_reference(backend, variant, dtype):
    acts, means, vars_ = _layers(variant, dtype, wide=backend != "triton" or dtype == torch.float32)
    spec = ref.VARIANTS[variant]
    fwd = dispatch.get_impl("bn_stats_forward", backend)
    bwd = dispatch.get_impl("bn_stats_backward", backend)
    loss, saved = fwd(acts, means, vars_, spec)
    loss_ref, saved_ref = ref.bn_stats_forward(acts, means, vars_, spec)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss, loss_ref, **TOL[dtype])
    torch.testing.assert_close(saved, saved_ref, rtol=1e-4, atol=1e-6)
    go = torch.tensor(1.5)
    for g, g_ref, a in zip(bwd(go, acts, saved, spec), ref.bn_stats_backward(go, acts, saved_ref, spec), acts):
        assert g.dtype == a.dtype and g.shape == a.shape
        torch.testing.assert_close(g.float(), g_ref.float(), **GRAD_TOL[dtype])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_public_op_autograd_matches_reference_formula(backend, variant, dtype):
    if backend == "triton" and dtype != torch.float32:
        pytest.skip("dtypes of the Triton kernels are covered by test_primitives_match_reference")
    acts, means, vars_ = _layers(variant, dtype, wide=backend != "triton")
    loss_ref, grads_ref = _ref_loss_and_grads(acts, means, vars_, variant)
    leaves = [a.detach().clone().requires_grad_() for a in acts]
    with ops.use_backend(backend, strict=True):
        loss = ops.bn_stat_loss(leaves, means, vars_, variant)
        grads = torch.autograd.grad(loss * 3.0, leaves)
    torch.testing.assert_close(loss, loss_ref, **TOL[dtype])
    for g, r in zip(grads, grads_ref):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), 3.0 * r.float(), **GRAD_TOL[dtype])


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_fp32_finite_differences(backend, variant):
    # The kernels are fp32-only, so a float64 gradcheck is not possible; central differences in
    # fp32 with a step of 1e-2 on O(1) values are accurate to ~1e-3 relative.
    shapes = [(3, 2, 3, 3), (2, 3, 2, 2)]
    acts = tuple(torch.randn(s, dtype=torch.float32, requires_grad=True) for s in shapes)
    means = [torch.randn(s[1]) for s in shapes]
    vars_ = [torch.rand(s[1]) + 0.5 for s in shapes]

    def f(*a):
        return ops.bn_stat_loss(list(a), means, vars_, variant)

    with ops.use_backend(backend, strict=True):
        assert torch.autograd.gradcheck(f, acts, eps=1e-2, atol=2e-3, rtol=2e-2, fast_mode=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_custom_op(backend):
    acts, means, vars_ = _layers("genie", torch.float32)
    acts = [a.requires_grad_() for a in acts[:2]]
    args = (acts, means[:2], vars_[:2]) + bn_ops._spec_scalars(ref.VARIANTS["genie"])
    with ops.use_backend(backend, strict=True):
        torch.library.opcheck(bn_ops.bn_stat_loss_op, args,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["gdfq", "genie"])
def test_large_mean_small_variance(backend, variant):
    # values 1000 + 1e-2 * randn: a one-pass fp32 sum of squares loses every digit of the variance
    shape = (4, 3, 8, 8)
    a64 = 1000.0 + 1e-2 * torch.randn(shape, dtype=torch.float64)
    a = a64.float()
    x = a.double()  # the exact fp32 values, analysed in fp64
    var64 = x.var(dim=(0, 2, 3), correction=0 if variant == "gdfq" else 1)
    mean64 = x.mean(dim=(0, 2, 3))
    rm, rv = mean64.float() + 0.01, torch.full((3,), 2e-4)
    flat = a.transpose(0, 1).reshape(3, -1)
    naive = (flat * flat).mean(1) - flat.mean(1) ** 2  # the failure mode being guarded against
    assert ((naive.double() - var64).abs() / var64).max() > 0.5
    with ops.use_backend(backend, strict=True):
        loss, saved = dispatch.dispatch("bn_stats_forward", a.device)([a], [rm], [rv], ref.VARIANTS[variant])
    count = a.numel() // 3
    dof = count - (0 if variant == "gdfq" else 1)
    # recover the variance from B_g (see reference/bn_stats.py): w = 1 / C for both variants
    if variant == "gdfq":
        var = rv.double() + saved[2].double() * dof * 3 / 4.0
        expected = ((mean64 - rm.double()) ** 2 + (var64 - rv.double()) ** 2).mean()
    else:
        target = torch.sqrt(rv.double() + 1e-6)
        # B = 2 (s - t) / (3 s dof)  ->  s = t / (1 - 1.5 B dof)
        var = (target / (1 - 1.5 * saved[2].double() * dof)) ** 2
        expected = (((mean64 - rm.double()) ** 2 + (var64.sqrt() - target) ** 2) / 3).sum()
    torch.testing.assert_close(var, var64, rtol=1e-4, atol=0)
    torch.testing.assert_close(saved[0].double(), mean64, rtol=1e-7, atol=0)
    torch.testing.assert_close(loss.double(), expected, rtol=2e-3, atol=0)


def test_bad_saved_is_a_clear_error():
    acts, means, vars_ = _layers("genie", torch.float32)
    for backend in [b for b in BACKENDS if b != "reference"]:
        bwd = dispatch.get_impl("bn_stats_backward", backend)
        with pytest.raises((ValueError, RuntimeError), match="saved"):
            bwd(torch.tensor(1.0), acts, torch.zeros(3, 2), ref.VARIANTS["genie"])
