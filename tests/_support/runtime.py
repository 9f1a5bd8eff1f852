"""Helpers of the integer-runtime tests: healthy random models and the fake-quant oracle.

The oracle is the fake-quant model itself. ``fq_input_codes`` records, for every quantized
layer, the integer codes its activation quantizer gives its input (``round(x / s) + z``, the same
arithmetic as the fake-quant op); the integer model must hold the same codes in the slot feeding
that layer. Codes may differ by one where a value lies within float rounding of a rounding tie
(the fake-quant model sums in a different order), so tests bound the fraction and size of such
flips instead of demanding bit equality, and check the logits against the flips they explain.
"""
import torch
from torch import nn

from zsq_engine.quant import QuantLayer, naive_ptq


def healthy(model: nn.Module, shape, batches: int = 3) -> nn.Module:
    """Give a randomly initialised model BatchNorm statistics of its own activations (random-init
    MobileNet / EfficientNet otherwise decay to ~0 outputs in eval mode)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, *shape))
    return model.eval()


def ptq(model: nn.Module, shape, wbits: int, abits: int, **kw) -> nn.Module:
    calib = [torch.randn(8, *shape) for _ in range(2)]
    return naive_ptq(model, calib, wbits, abits, progress=False, **kw).eval()


@torch.no_grad()
def fq_input_codes(qmodel: nn.Module, x: torch.Tensor):
    """(logits, {layer name: int64 input codes in NHWC / [M, K]}) of the fake-quant model."""
    codes, handles = {}, []
    for name, layer in qmodel.named_modules():
        if isinstance(layer, QuantLayer) and layer.act_quantizer is not None:
            def hook(mod, args, name=name, q=layer.act_quantizer):
                s, z = q.qparams() if hasattr(q, "qparams") else (q.scale.detach(), q.zero_point.detach())
                v = torch.round(args[0].float() * torch.reciprocal(s.float())) + z.float()
                v = v.clamp(q.quant_min, q.quant_max).to(torch.int64)
                codes[name] = v.permute(0, 2, 3, 1) if v.dim() == 4 else v
            handles.append(layer.register_forward_pre_hook(hook))
    try:
        out = qmodel(x)
    finally:
        for h in handles:
            h.remove()
    return out, codes


@torch.no_grad()
def int_input_codes(int_model, x: torch.Tensor):
    """(output, {layer name: int64 input codes}) of an IntModel (integer-input layers only)."""
    out, env = int_model.run(x, keep=True)
    codes = {}
    for step in int_model.program:
        if "layer" in step:
            layer = int_model.layers[step["layer"]]
            if layer.input_q is not None:
                codes[layer.config["name"]] = env[step["in"]].to(torch.int64)
    return out, codes


def compare(qmodel, int_model, x, max_flip_fraction=1e-3, max_code_diff=3):
    """Assert the integer model reproduces the fake-quant model on ``x``; returns a summary.

    * every integer layer input holds the fake-quant codes, except at most ``max_flip_fraction``
      of them (a flip is a tie broken the other way by float rounding; downstream of it a code can
      move by more than one, so only the fraction is bounded, plus ``max_code_diff``);
    * the logits differ from the fake-quant logits by no more than fp32 rounding plus what the
      flipped codes of the classifier input explain: ``s_in * |delta codes| @ |W_hat|^T``.
    """
    ref, ref_codes = fq_input_codes(qmodel, x)
    out, codes = int_input_codes(int_model, x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert set(codes) == set(ref_codes), (sorted(codes), sorted(ref_codes))
    flips, total = 0, 0
    for name, c in codes.items():
        r = ref_codes[name]
        assert c.shape == r.shape, (name, c.shape, r.shape)
        d = (c - r).abs()
        assert int(d.max()) <= max_code_diff, f"{name}: codes differ by {int(d.max())}"
        flips += int((d > 0).sum())
        total += d.numel()
    assert flips <= max_flip_fraction * total, f"{flips} of {total} codes differ"
    # logits: explained by the classifier input's flips
    last = [m for m in qmodel.modules() if isinstance(m, QuantLayer)][-1]
    tol = 1e-4 * (1 + ref.abs())
    if isinstance(last, nn.Linear) or last.weight.dim() == 2:
        name = [n for n, m in qmodel.named_modules() if m is last][0]
        if name in codes:
            s = last.act_quantizer.qparams()[0].float()
            dcodes = (codes[name] - ref_codes[name]).abs().float()
            tol = tol + s * dcodes @ last.quantized_weight().abs().t()
    assert bool(((out - ref).abs() <= tol).all()), f"logits differ by {float((out - ref).abs().max()):.3g}"
    return {"flips": flips, "codes": total, "max_logit_diff": float((out - ref).abs().max())}


def perturbed_qat_student():
    """A W4A4 QAT student of the committed model (learnable LSQ ranges) after a training step's
    worth of change to its weights and ranges, in eval mode."""
    from zsq_engine.models import get_model
    from zsq_engine.qat.student import build_student
    from zsq_engine.quant import calibrate_activations

    student = build_student(get_model("fmnist_resnet", pretrained=True), 4, 4, weight_method="minmax")
    calibrate_activations(student, [torch.randn(8, 1, 28, 28)], progress=False)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "scale" in name or "weight" in name:
                p.mul_(1.0 + 0.01 * torch.randn_like(p))
    return student.eval()
