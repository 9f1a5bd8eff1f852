"""Minimal re-implementations of the research quantizers, for the compat tests (no tests here).

Written from the documented behaviour of each codebase (attributes, lazy initialisation, the
forward formula with torch ops and straight-through rounding), not imported from the projects:
these are what ``zsq_engine.compat.accelerate`` must reproduce bit for bit (or within the stated
tolerances). Each keeps the research code's own arithmetic order: ``x / delta`` (a division),
``round_ste(v) = (v.round() - v).detach() + v``, ``grad_scale(t, g) = (t - t g).detach() + t g``.
"""
import pytest
import torch
from torch import nn


def round_ste_ref(v):
    return (v.round() - v).detach() + v


def grad_scale_ref(t, g):
    return (t - t * g).detach() + t * g


def lp_loss_ref(pred, tgt, p=2.0, reduction="none"):
    if reduction == "none":
        return (pred - tgt).abs().pow(p).sum(1).mean()
    return (pred - tgt).abs().pow(p).mean()


def rectified_sigmoid_ref(alpha, gamma=-0.1, zeta=1.1):
    return torch.clamp(torch.sigmoid(alpha) * (zeta - gamma) + gamma, 0, 1)


# ------------------------------------------------------------------ BRECQ

class UniformAffineQuantizer(nn.Module):
    """BRECQ: asymmetric [0, 2^b - 1]; delta / zero_point set lazily on the first forward."""

    def __init__(self, n_bits=4, symmetric=False, channel_wise=False, scale_method="max", leaf_param=False):
        super().__init__()
        self.sym = symmetric
        self.n_bits = n_bits
        self.n_levels = 2 ** n_bits
        self.delta = None
        self.zero_point = None
        self.inited = False
        self.leaf_param = leaf_param
        self.channel_wise = channel_wise
        self.scale_method = scale_method

    def forward(self, x):
        if self.inited is False:
            delta, zero_point = self._init(x)
            self.delta = nn.Parameter(delta) if self.leaf_param else delta
            self.zero_point = zero_point
            self.inited = True
        x_int = round_ste_ref(x / self.delta) + self.zero_point
        x_quant = torch.clamp(x_int, 0, self.n_levels - 1)
        return (x_quant - self.zero_point) * self.delta

    def _init(self, x):
        x = x.detach()
        if self.channel_wise:
            view = [-1] + [1] * (x.dim() - 1)
            flat = x.reshape(x.shape[0], -1)
            if self.scale_method == "mse":
                # per channel, clip ratios 1.0 .. 0.21 scored by Lp(2.4); zero points may leave the range
                best = torch.full((x.shape[0],), float("inf"), device=x.device)
                delta = torch.zeros(x.shape[0], device=x.device)
                zp = torch.zeros(x.shape[0], device=x.device)
                for i in range(80):
                    hi, lo = flat.max(1).values * (1 - 0.01 * i), flat.min(1).values * (1 - 0.01 * i)
                    d = (hi - lo) / (self.n_levels - 1)
                    z = (-lo / d).round()
                    q = (torch.clamp(torch.round(flat / d[:, None]) + z[:, None], 0, self.n_levels - 1)
                         - z[:, None]) * d[:, None]
                    score = (flat - q).abs().pow(2.4).mean(1)
                    better = score < best
                    best, delta, zp = torch.where(better, score, best), torch.where(better, d, delta), \
                        torch.where(better, z, zp)
                return delta.reshape(view), zp.reshape(view)
            lo = flat.min(1).values.clamp(max=0)
            hi = flat.max(1).values.clamp(min=0)
            delta = ((hi - lo) / (self.n_levels - 1)).clamp(min=1e-8)
            return delta.reshape(view), (-lo / delta).round().reshape(view)
        lo, hi = min(x.min().item(), 0), max(x.max().item(), 0)
        delta = max(float(hi - lo) / (self.n_levels - 1), 1e-8)
        zero_point = round(-lo / delta)  # a python int, as in BRECQ's 'max' method
        return torch.tensor(delta).type_as(x), zero_point


class AdaRoundQuantizer(nn.Module):
    """BRECQ AdaRound: floor(W / delta) recomputed from the weight, learned rounding logits alpha."""

    def __init__(self, uaq: UniformAffineQuantizer, weight: torch.Tensor, round_mode="learned_hard_sigmoid"):
        super().__init__()
        self.n_bits, self.sym = uaq.n_bits, uaq.sym
        self.delta, self.zero_point, self.n_levels = uaq.delta, uaq.zero_point, uaq.n_levels
        self.round_mode = round_mode
        self.soft_targets = False
        self.gamma, self.zeta = -0.1, 1.1
        self.beta = 2 / 3
        ws = weight.detach() / self.delta
        rest = ws - torch.floor(ws)
        self.alpha = nn.Parameter(-torch.log((self.zeta - self.gamma) / (rest - self.gamma) - 1))

    def forward(self, x):
        if self.round_mode == "nearest":
            x_int = torch.round(x / self.delta)
        elif self.round_mode == "learned_hard_sigmoid":
            x_floor = torch.floor(x / self.delta)
            h = rectified_sigmoid_ref(self.alpha, self.gamma, self.zeta) if self.soft_targets \
                else (self.alpha >= 0).float()
            x_int = x_floor + h
        else:
            raise ValueError(self.round_mode)
        x_quant = torch.clamp(x_int + self.zero_point, 0, self.n_levels - 1)
        return (x_quant - self.zero_point) * self.delta


# ------------------------------------------------------------------ QDrop

class MinMaxObserver(nn.Module):
    def __init__(self, bit=8, symmetric=False, ch_axis=-1):
        super().__init__()
        self.quant_min, self.quant_max = 0, 2 ** bit - 1
        self.ch_axis = ch_axis
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def forward(self, x):
        if self.ch_axis == -1:
            self.min_val, self.max_val = x.min(), x.max()
        else:
            y = x.transpose(0, self.ch_axis).flatten(1)
            self.min_val, self.max_val = y.min(1).values, y.max(1).values
        return x

    def calculate_qparams(self, min_val, max_val):
        lo, hi = min_val.clamp(max=0), max_val.clamp(min=0)
        scale = ((hi - lo) / (self.quant_max - self.quant_min)).clamp(min=1e-8).reshape(-1)
        zero_point = (self.quant_min - torch.round(lo / scale.reshape(lo.shape))).clamp(
            self.quant_min, self.quant_max).int().reshape(-1)
        return scale, zero_point


class _QDropBase(nn.Module):
    def __init__(self, bit=4, symmetric=False, ch_axis=-1):
        super().__init__()
        self.observer = MinMaxObserver(bit, symmetric, ch_axis)
        self.bit, self.symmetric, self.ch_axis = bit, symmetric, ch_axis
        self.observer_enabled = 0
        self.fake_quant_enabled = 0
        self.quant_min, self.quant_max = self.observer.quant_min, self.observer.quant_max
        self.drop_prob = 1.0

    def _observe(self):
        return self.observer.calculate_qparams(self.observer.min_val, self.observer.max_val)

    def _drop(self, x_q, x):
        if self.drop_prob < 1.0:
            return torch.where(torch.rand_like(x_q) < self.drop_prob, x_q, x)
        return x_q

    def _shape(self, x):
        shape = [1] * x.dim()
        shape[self.ch_axis] = x.shape[self.ch_axis]
        return shape

    def _grad_factor(self, x):
        """LSQ: 1/sqrt(numel * qmax), numel per channel when per-channel (as QDrop); 1 when off."""
        if not self.use_grad_scaling:
            return 1.0
        numel = x.numel() / x.shape[self.ch_axis] if self.ch_axis != -1 else x.numel()
        return 1.0 / (numel * self.quant_max) ** 0.5

    def _fake_quant(self, x, s, z):
        return (torch.clamp(round_ste_ref(x / s) + z, self.quant_min, self.quant_max) - z) * s


class LSQFakeQuantize(_QDropBase):
    def __init__(self, bit=4, symmetric=False, ch_axis=-1, use_grad_scaling=True):
        super().__init__(bit, symmetric, ch_axis)
        self.scale = nn.Parameter(torch.tensor([1.0]))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int))
        self.register_buffer("eps", torch.tensor([torch.finfo(torch.float32).eps]))
        self.use_grad_scaling = use_grad_scaling

    def forward(self, x):
        if self.observer_enabled == 1:
            self.observer(x.detach())
            s, z = self._observe()
            if self.ch_axis != -1:
                self.scale.data = torch.ones_like(s)
                self.zero_point.resize_(z.shape)
            self.scale.data.copy_(s)
            self.zero_point.copy_(z)
        else:
            self.scale.data.abs_()
            self.scale.data.clamp_(min=self.eps.item())
        if self.fake_quant_enabled != 1:
            return x
        g = self._grad_factor(x)
        if self.ch_axis != -1:
            s = grad_scale_ref(self.scale, g).reshape(self._shape(x))
            z = self.zero_point.data.int().reshape(self._shape(x))
        else:
            s, z = grad_scale_ref(self.scale, g), self.zero_point.item()
        return self._drop(self._fake_quant(x, s, z), x)


class LSQPlusFakeQuantize(_QDropBase):
    def __init__(self, bit=4, symmetric=False, ch_axis=-1, use_grad_scaling=True):
        super().__init__(bit, symmetric, ch_axis)
        self.scale = nn.Parameter(torch.tensor([1.0]))
        self.zero_point = nn.Parameter(torch.tensor([0.0]))
        self.register_buffer("eps", torch.tensor([torch.finfo(torch.float32).eps]))
        self.use_grad_scaling = use_grad_scaling

    def forward(self, x):
        if self.observer_enabled == 1:
            self.observer(x.detach())
            s, z = self._observe()
            if self.ch_axis != -1:
                self.scale.data = torch.ones_like(s)
                self.zero_point.data = torch.zeros_like(z.float())
            self.scale.data.copy_(s)
            self.zero_point.data.copy_(z.float())
        else:
            self.scale.data.abs_()
            self.scale.data.clamp_(min=self.eps.item())
            self.zero_point.data.clamp_(self.quant_min, self.quant_max)
        if self.fake_quant_enabled != 1:
            return x
        g = self._grad_factor(x)
        z = round_ste_ref(self.zero_point)
        s, z = grad_scale_ref(self.scale, g), grad_scale_ref(z, g)
        if self.ch_axis != -1:
            s, z = s.reshape(self._shape(x)), z.reshape(self._shape(x))
        return self._drop(self._fake_quant(x, s, z), x)


class FixedFakeQuantize(_QDropBase):
    def __init__(self, bit=4, symmetric=False, ch_axis=-1):
        super().__init__(bit, symmetric, ch_axis)
        self.register_buffer("scale", torch.tensor([1.0]))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int))

    def forward(self, x):
        if self.observer_enabled == 1:
            self.observer(x.detach())
            s, z = self._observe()
            if self.scale.shape != s.shape:
                self.scale.resize_(s.shape)
                self.zero_point.resize_(z.shape)
            self.scale.copy_(s)
            self.zero_point.copy_(z)
        if self.fake_quant_enabled != 1:
            return x
        if self.ch_axis != -1:
            s = self.scale.data.reshape(self._shape(x))
            z = self.zero_point.data.int().reshape(self._shape(x))
        else:
            s, z = self.scale.item(), self.zero_point.item()
        return self._drop(self._fake_quant(x, s, z), x)


# ------------------------------------------------------------------ Genie

class RectifiedSigmoid(nn.Module):
    def __init__(self, gamma, zeta):
        super().__init__()
        self.gamma, self.zeta = gamma, zeta

    def forward(self, x):
        return rectified_sigmoid_ref(x, self.gamma, self.zeta)

    def inverse(self, y):
        return -torch.log((self.zeta - self.gamma) / (y - self.gamma) - 1)


class GenieWeightQuantizer(nn.Module):
    """Genie-M weights: frozen floor, learned per-channel scale AND rounding logits; no input."""

    def __init__(self, weight, n_bits=4):
        super().__init__()
        self.n_bits = n_bits
        flat = weight.detach().reshape(weight.shape[0], -1)
        lo, hi = flat.min(1).values, flat.max(1).values
        view = [-1] + [1] * (weight.dim() - 1)
        scale = ((hi - lo) / (2 ** n_bits - 1)).reshape(view)
        self.zero_point = (-lo.reshape(view) / scale).round()
        self.scale = nn.Parameter(scale)
        self.x_floor = (weight.detach() / self.scale).floor().detach()
        self.sigmoid = RectifiedSigmoid(-0.1, 1.1)
        residue = weight.detach() / self.scale.detach() - self.x_floor
        self.bit_logit = nn.Parameter(self.sigmoid.inverse(residue))
        self.train_mode = False

    def forward(self):
        h = self.sigmoid(self.bit_logit) if self.train_mode else (self.bit_logit >= 0).float()
        x_quant = torch.clamp(self.x_floor + h + self.zero_point, 0, 2 ** self.n_bits - 1)
        return (x_quant - self.zero_point) * self.scale


class GenieActivationQuantizer(nn.Module):
    """Genie activations: lazy scalar scale, clamp THEN straight-through round, QDrop by rand_like."""

    def __init__(self, n_bits=4):
        super().__init__()
        self.n_bits = n_bits
        self.scale = None
        self.initialized = False
        self.signed = None
        self.train_mode = False

    def forward(self, x):
        if not self.initialized:
            self.signed = x.min() < 0  # a bool tensor, as in Genie
            bound = x.detach().abs().max() if self.signed else x.detach().max()
            levels = 2 ** (self.n_bits - 1) - 1 if self.signed else 2 ** self.n_bits - 1
            self.scale = nn.Parameter((bound / levels).reshape(1, 1, 1, 1))
            self.initialized = True
        qn = -(2 ** (self.n_bits - 1)) if self.signed else 0
        qp = 2 ** (self.n_bits - 1) - 1 if self.signed else 2 ** self.n_bits - 1
        v_hat = round_ste_ref(torch.clamp(x / self.scale, qn, qp)) * self.scale
        if self.train_mode:
            return torch.where(torch.rand_like(x) < 0.5, v_hat, x)
        return v_hat


class MysteryQuantizer(nn.Module):
    """A quantizer class no style matches: must be left alone and reported."""

    def __init__(self):
        super().__init__()
        self.step = nn.Parameter(torch.tensor(0.1))

    def forward(self, x):
        return round_ste_ref(x / self.step) * self.step


# ------------------------------------------------------------------ comparison harness

def run_steps(module, make_input, steps=3, seed=0, lr=0.01, no_input=False):
    """Forward + backward + Adam step ``steps`` times; returns everything observable per step.

    ``make_input(step)`` gives a fresh input; the upstream gradient is drawn from a generator
    of its own so the module's own use of torch's RNG (QDrop draws) is the only consumer.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = None
    record = []
    for step in range(steps):
        x = None if no_input else make_input(step).requires_grad_()
        y = module() if no_input else module(x)
        if opt is None:  # after the first call, once lazily-created parameters exist
            params = [p for p in module.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=lr) if params else None
        dy = torch.randn(y.shape, generator=gen).to(y.device)
        for p in module.parameters():
            p.grad = None
        y.backward(dy)
        grads = {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in module.named_parameters()}
        record.append({"y": y.detach().clone(), "dx": None if no_input else x.grad.detach().clone(),
                       "grads": grads})
        if opt is not None:
            opt.step()
        record[-1]["params"] = {n: p.detach().clone() for n, p in module.named_parameters()}
    return record


def assert_same(actual, expected, what, atol=0.0, rtol=0.0):
    if actual is None or expected is None:
        assert actual is None and expected is None, f"{what}: one gradient is None"
        return
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if atol == 0.0 and rtol == 0.0:
        assert torch.equal(actual, expected), f"{what}: max |diff| {(actual - expected).abs().max().item()}"
    else:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def compare_records(acc, ref, tol=None):
    """``tol``: dict of record key / parameter name -> (atol, rtol); everything else must be equal."""
    tol = tol or {}
    for step, (a, r) in enumerate(zip(acc, ref)):
        assert_same(a["y"], r["y"], f"step {step} output", *tol.get("y", (0.0, 0.0)))
        assert_same(a["dx"], r["dx"], f"step {step} input gradient", *tol.get("dx", (0.0, 0.0)))
        assert a["grads"].keys() == r["grads"].keys()
        for name in r["grads"]:
            assert_same(a["grads"][name], r["grads"][name], f"step {step} grad of {name}", *tol.get(name, (0.0, 0.0)))
            assert_same(a["params"][name], r["params"][name], f"step {step} {name} after the optimiser step",
                        *tol.get("step:" + name, tol.get(name, (0.0, 0.0))))


def assert_same_state(acc_module, ref_module):
    a, r = acc_module.state_dict(), ref_module.state_dict()
    assert list(a.keys()) == list(r.keys())
    for k in r:
        assert torch.equal(a[k], r[k]), k


class OpCounter:
    """Counts calls of the public fused ops (so a test knows the fused path ran, not a fallback)."""

    NAMES = ("fake_quant", "lsq_fake_quant", "adaround_fake_quant")

    def __init__(self, monkeypatch):
        from zsq_engine import ops

        self.calls = {n: 0 for n in self.NAMES}
        for name in self.NAMES:
            real = getattr(ops, name)

            def spy(*args, _real=real, _name=name, **kwargs):
                self.calls[_name] += 1
                return _real(*args, **kwargs)

            monkeypatch.setattr(ops, name, spy)


BACKENDS = [("cpu", "cpu"), ("cpu", "reference"),
            pytest.param(("cuda", None), marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.fixture(params=BACKENDS, ids=lambda b: f"{b[0]}-{b[1] or 'auto'}")
def backend(request):
    """The device to test on, with the op backend forced (cpu: the C++ extension or the reference;
    cuda: automatic dispatch, i.e. the Triton kernels)."""
    from zsq_engine.ops import use_backend

    device, name = request.param
    if name is None:
        yield torch.device(device)
    else:
        with use_backend(name):
            yield torch.device(device)
