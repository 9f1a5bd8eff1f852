"""The integer model reproduces its fake-quant model on real data (the issue's correctness bar).

On the first 1000 Fashion-MNIST test images with the committed ResNet: top-1 agreement >= 99.9 %
and accuracy within 0.1 point at W8A8 and W4A4 (naive PTQ) and for a (short) block-reconstructed
W4A4 model; on every image, every layer's input codes and the logits within the tolerance the
classifier input's grid explains (see _support/runtime.py: compare). The full 10,000-image numbers are
measured with `zsq convert --check` and recorded in docs/runtime.md. Also: the pre-packed CPU launch gives
exactly what the public op gives, and it is bypassed when another backend is forced.
"""
import pytest
import torch

from _support.data import needs_fmnist
from _support.runtime import compare
from zsq_engine.models import get_model
from zsq_engine.ops import use_backend
from zsq_engine.quant import naive_ptq
from zsq_engine.runtime import IntConv2d, convert
from zsq_engine.runtime.agreement import agreement

pytestmark = pytest.mark.slow  # converts and runs models on 1,000 Fashion-MNIST test images

N_TEST = 1000


@pytest.fixture(scope="module")
def data():
    from zsq_engine.data.sources import fmnist_calibration
    from zsq_engine.data import load_fashion_mnist, normalize_fashion_mnist

    images, labels = load_fashion_mnist("test")
    x, y = normalize_fashion_mnist(images[:N_TEST]), labels[:N_TEST]
    calib = [b for b, _ in fmnist_calibration(256, None, 0)]
    return x, y, calib


@pytest.fixture(scope="module")
def fp_model():
    return get_model("fmnist_resnet", pretrained=True).eval()


@torch.no_grad()
def _check_reproduces(qmodel, int_model, x, y):
    ref = torch.cat([qmodel(x[i:i + 250]) for i in range(0, len(x), 250)])
    out = torch.cat([int_model(x[i:i + 250]) for i in range(0, len(x), 250)])
    agree = (ref.argmax(1) == out.argmax(1)).float().mean().item() * 100
    acc_fq = (ref.argmax(1) == y).float().mean().item() * 100
    acc_int = (out.argmax(1) == y).float().mean().item() * 100
    assert agree >= 99.9, f"top-1 agreement {agree:.2f} %"
    assert abs(acc_int - acc_fq) <= 0.1, f"accuracy {acc_int:.2f} vs fake-quant {acc_fq:.2f}"
    assert acc_fq > 80.0  # a working quantized model, not two equally broken ones
    # the helper used by the CLI computes the same numbers
    r = agreement(qmodel, int_model, [(x[i:i + 250], y[i:i + 250]) for i in range(0, len(x), 250)],
                  show_progress=False)
    assert r["images"] == len(x) and r["agreement"] == pytest.approx(agree, abs=1e-3)
    assert r["fq_accuracy"] == pytest.approx(acc_fq, abs=1e-3) and r["int_accuracy"] == pytest.approx(acc_int, abs=1e-3)
    assert r["max_logit_diff"] == pytest.approx(float((out - ref).abs().max()), rel=1e-6, abs=1e-9)
    # every layer's input codes, and each logit within fp32 rounding plus what the classifier
    # input's differing codes explain (its scale times |codes diff| @ |W|), on every image
    for i in range(0, len(x), 250):
        compare(qmodel, int_model, x[i:i + 250])
    return agree, acc_fq, acc_int


@needs_fmnist
@pytest.mark.parametrize("bits", [8, 4])
def test_naive_ptq_reproduced_on_test_images(data, fp_model, bits):
    x, y, calib = data
    q = naive_ptq(fp_model, calib, bits, bits, progress=False).eval()
    _check_reproduces(q, convert(q), x, y)


@needs_fmnist
def test_reconstructed_model_reproduced_on_test_images(data, fp_model):
    from zsq_engine.recon import reconstruct_model

    x, y, calib = data
    images = torch.cat(calib)[:32]
    r = reconstruct_model(fp_model, images, 4, 4, method="qdrop", iters=4, num=32, show_progress=False)
    _check_reproduces(r.model.eval(), convert(r.model), x, y)


def test_cpu_launch_equals_public_op_and_yields_to_forced_backends():
    from zsq_engine.ops.dispatch import backend_status

    q = naive_ptq(get_model("fmnist_resnet", pretrained=True), [torch.randn(16, 1, 28, 28)], 4, 4,
                  progress=False).eval()
    im = convert(q)
    x = torch.randn(5, 1, 28, 28)
    launched = [m for m in im.layers.values() if m._launch is not None]
    if not backend_status("cpu")[0]:
        assert not launched  # no extension: everything goes through the public op
        return
    assert len(launched) == sum(m.input_q is not None for m in im.layers.values())
    fast = im(x)
    calls = []
    for m in launched:
        inner = m._launch
        m._launch = lambda *a, inner=inner: calls.append(1) or inner(*a)
    with use_backend("reference"):
        ref = im(x)  # the forced backend runs, not the pre-packed C++ launch
    assert not calls
    # fp64 reference epilogue vs fp32 kernel: equal up to a code flipped at a rounding tie
    assert (ref - fast).abs().max() < 0.05 * (1 + ref.abs().max())
    im(x)
    assert len(calls) == len(launched)
    for m in launched:
        m._launch = None  # now the public op with the cpu backend: the same kernel, the same numbers
    assert torch.equal(im(x), fast)
    with use_backend("reference"):
        im_ref = convert(q)  # converted while another backend is forced: the launch is still built
    assert sum(m._launch is not None for m in im_ref.layers.values()) == len(launched)


def test_moving_the_model_re_derives_the_launch():
    q = naive_ptq(get_model("fmnist_resnet", pretrained=True), [torch.randn(8, 1, 28, 28)], 8, 8,
                  progress=False).eval()
    im = convert(q)
    x = torch.randn(2, 1, 28, 28)
    before = im(x)
    im.to(torch.float32)  # any _apply: buffers replaced, layers prepared again on the next call
    assert not any(m._ready for m in im.layers.values() if isinstance(m, IntConv2d))
    assert torch.equal(im(x), before)
