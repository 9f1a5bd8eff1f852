"""Ahead-of-time compilation of every GPU-path Triton kernel for Hopper (sm_90a) and Ampere
(sm_80), on a machine with no GPU, with the checks a first launch on a real GPU would need.

What is compiled. A *scenario* is one call of a public launcher of this package (``int8_gemm``,
``w4a8_gemm``, ``int8_conv2d_nhwc``, ``lsq_backward``, ``bn_stats_forward``, ...) with the
operand kinds, dtypes, epilogue and shape it names. The launcher really runs, on ``meta``
tensors (shapes and data pointers, no memory), with Triton's launch replaced by a capture: every
``kernel[grid](...)`` records its arguments, and every autotuned kernel records one launch per
autotune config. Each captured launch is then specialised exactly as Triton's JIT would
specialise it (its own binder: ``tt.divisibility`` 16 for 16-byte aligned pointers and for ints
divisible by 16, ints equal to 1 as constants) and compiled with ``triton.compile`` for the
target. So the compiled set is what the GPU path picks (autotune lists, split-K heuristic with
an H100's 132 SMs, tile shapes chosen on the host), not a hand-written copy of it.

"Aligned" scenarios use allocator-aligned tensors and sizes divisible by 16 (the headline
shapes); "unaligned" ones use what the ops also accept: odd K / channel counts, views with a
storage offset, transposed weights, strided (NCHW-as-NHWC) inputs, C not a multiple of 16);
they get their own autotune lists. Coverage (about 80 s on 2 idle cores): every autotune
config that survives pruning, for every operand kind (int8, uint8, W4A8, W4A4 and their unsigned
forms) and every epilogue kind of the GEMM, and for both activation kinds and the residual
epilogues of the conv, at the aligned specialisation on sm_90a; every config of the unaligned
lists; every config of the int8 / W4A8 / W4A4 GEMMs and the conv on sm_80. The other sm_80 and
unaligned cases run on the first config of each list (``configs="first"``).
Elementwise / reduction kernels: every dtype, per-tensor / per-channel layout and mode the
launchers request, on sm_90a; every kernel at least once on sm_80.

Run ``python -m zsq_engine.kernels.aot --out results.json`` (it re-executes itself without
``TRITON_INTERPRET``: the interpreter's kernels are not the GPU's). :func:`problems` holds the
checks shared by the tests and ``benchmarks/gpu_static.py``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Tuple

# An H100 SXM / H200 has 132 SMs: the split-K heuristic and the reduction splits use it.
H100_SMS = 132
ARCHS = {"sm90a": 90, "sm80": 80}
# Opt-in shared memory per block (CUDA C++ Programming Guide, "Technical Specifications per
# Compute Capability": 227 KB on 9.0, 163 KB on 8.0).
SMEM_PER_BLOCK = {90: 227 * 1024, 80: 163 * 1024}


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One launcher call: ``op`` names a builder below, ``args`` its keyword arguments."""
    op: str
    args: Tuple[Tuple[str, object], ...]
    arch: str = "sm90a"
    aligned: bool = True
    configs: str = "all"  # "all" autotune configs, or "first" of each list

    @property
    def id(self) -> str:
        parts = [self.op] + [f"{v}" if k in ("kind", "mode", "dtype", "layout", "epilogue", "variant")
                             else f"{k}{v}" for k, v in self.args]
        parts += [self.arch, "aligned" if self.aligned else "unaligned"]
        if self.configs != "all":
            parts.append(self.configs)
        return "-".join(str(p) for p in parts)


def _sc(op, arch="sm90a", aligned=True, configs="all", **args) -> Scenario:
    return Scenario(op, tuple(args.items()), arch, aligned, configs)


GEMM_KINDS = ("int8", "w4a8", "w4a4")
EPILOGUES = ("fp32_bias_relu", "fp16_res_relu6", "bf16_rowscale", "requant_res_wzp")
FQ_MODES = ("fwd", "ste_bwd", "lsq_bwd", "qdrop_fwd", "qdrop_bwd", "qdrop_lsq_bwd")
FQ_DTYPES = ("fp32", "fp16", "bf16")
FQ_LAYOUTS = ("nchw_channel", "weight_channel", "tensor", "last_axis")


def scenarios() -> List[Scenario]:
    """Every scenario compiled by the tests and the static report (pure data, cheap)."""
    out: List[Scenario] = []
    # Integer GEMM: large-M (8192^3) and small-M (W4A8 style, M = 16, K = N = 8192) autotune lists.
    for kind in GEMM_KINDS:
        out.append(_sc("gemm", kind=kind, M=8192, N=8192, K=8192))
        out.append(_sc("gemm", kind=kind, M=16, N=8192, K=8192))
    for kind in ("uint8", "w4a8_u8", "w4a4_u"):
        out.append(_sc("gemm", kind=kind, M=8192, N=8192, K=8192))
        out.append(_sc("gemm", kind=kind, M=16, N=8192, K=8192))
    for ep in EPILOGUES:
        out.append(_sc("gemm", kind="int8", M=8192, N=8192, K=8192, epilogue=ep))
        out.append(_sc("gemm", kind="w4a8", M=16, N=8192, K=8192, epilogue=ep))
    out.append(_sc("gemm", configs="first", kind="w4a8", M=1, N=8192, K=8192))
    for kind in GEMM_KINDS:
        out.append(_sc("gemm", aligned=False, kind=kind, M=1000, N=1000, K=1001))
        out.append(_sc("gemm", aligned=False, configs="all" if kind == "int8" else "first", kind=kind, M=7, N=1000,
                       K=1001))
        out.append(_sc("gemm", arch="sm80", kind=kind, M=8192, N=8192, K=8192))
        out.append(_sc("gemm", arch="sm80", kind=kind, M=16, N=8192, K=8192))
    out.append(_sc("int_mm", aligned=False, M=4096, N=4096, K=4096))  # b [K, N]: read transposed
    out.append(_sc("gemm", arch="sm80", aligned=False, kind="int8", M=1000, N=1000, K=1001))
    # Implicit-GEMM conv (ResNet-50 3x3 stage-1 conv at batch 256) and depthwise.
    for kind in ("int8", "uint8"):
        out.append(_sc("conv", kind=kind, B=256, H=56, C=64, O=64,
                       k=3, stride=1, epilogue="requant_res_wzp" if kind == "uint8" else "requant_relu"))
    out.append(_sc("conv", kind="int8", B=256, H=56, C=64, O=256, k=1, stride=1,
                   epilogue="fp16_res_relu6"))
    out.append(_sc("conv", aligned=False, configs="first", kind="uint8", B=1, H=224, C=3, O=64, k=7, stride=2,
                   epilogue="requant_relu"))
    out.append(_sc("conv", aligned=False, kind="int8", B=64, H=56, C=40, O=24, k=3, stride=1,
                   epilogue="requant_relu"))  # EfficientNet-Lite channel counts (not multiples of 16)
    out.append(_sc("conv", aligned=False, kind="uint8", B=64, H=28, C=24, O=40, k=1, stride=1,
                   epilogue="requant_res_wzp"))
    out.append(_sc("conv", arch="sm80", kind="int8", B=256, H=56, C=64, O=64, k=3, stride=1,
                   epilogue="requant_relu"))
    out.append(_sc("conv", arch="sm80", aligned=False, kind="int8", B=64, H=56, C=40, O=24, k=3, stride=1,
                   epilogue="requant_relu"))
    for kind, ep in (("int8", "requant_relu"), ("uint8", "requant_res_wzp"), ("int8", "none")):
        out.append(_sc("depthwise", kind=kind, B=256, H=56, C=96, k=3, stride=1, epilogue=ep))
    out.append(_sc("depthwise", aligned=False, kind="uint8", B=3, H=17, C=35, k=3, stride=2, epilogue="fp32_bias_relu"))
    out.append(_sc("depthwise", arch="sm80", kind="uint8", B=256, H=56, C=96, k=3, stride=1,
                   epilogue="requant_res_wzp"))
    # Fake quant: every mode x dtype on the LSQ headline layout, the other layouts on fp32/bf16.
    for mode in FQ_MODES:
        for dtype in FQ_DTYPES:
            out.append(_sc("fake_quant", mode=mode, dtype=dtype, layout="nchw_channel"))
        for layout in FQ_LAYOUTS[1:]:
            out.append(_sc("fake_quant", mode=mode, dtype="fp32" if mode.startswith("qdrop") else "bf16",
                           layout=layout))
    out.append(_sc("fake_quant", aligned=False, mode="lsq_bwd", dtype="fp16", layout="nchw_channel"))
    out.append(_sc("fake_quant", aligned=False, mode="fwd", dtype="fp32", layout="tensor"))
    out.append(_sc("fake_quant", mode="fwd", dtype="fp32", layout="huge_tensor"))
    for mode in ("fwd", "lsq_bwd"):
        out.append(_sc("fake_quant", arch="sm80", mode=mode, dtype="bf16", layout="nchw_channel"))
    # BN-statistic loss: every variant, forward (moments + finish) and backward, mixed dtypes.
    for variant in ("genie", "zeroq", "gdfq"):
        out.append(_sc("bn_stats", variant=variant))
    out.append(_sc("bn_stats", variant="genie", big=1))
    out.append(_sc("bn_stats", arch="sm80", variant="zeroq"))
    # AdaRound, scale search, QDrop mixing, uniforms.
    for dtype in FQ_DTYPES:
        out.append(_sc("adaround", dtype=dtype))
    out.append(_sc("adaround", aligned=False, dtype="fp32"))
    out.append(_sc("adaround", arch="sm80", dtype="bf16"))
    for p in (2.0, 2.4):
        out.append(_sc("scale_search", p=p))
    out.append(_sc("scale_search", aligned=False, p=2.4))
    for dtype in FQ_DTYPES:
        out.append(_sc("qdrop_mix", dtype=dtype))
    out.append(_sc("qdrop_mix", aligned=False, dtype="bf16"))
    out.append(_sc("uniform"))
    for op, args in (("scale_search", {"p": 2.4}), ("qdrop_mix", {"dtype": "bf16"}), ("uniform", {})):
        out.append(_sc(op, arch="sm80", **args))
    return out


# ----------------------------------------------------------------------------- launcher calls

def _t(shape, dtype, aligned=True, device="meta"):
    """A meta tensor; unaligned ones are a view one element into a larger buffer."""
    import torch
    n = 1
    for s in shape:
        n *= s
    if aligned:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.empty(n + 1, dtype=dtype, device=device)[1:].view(shape)


def _epilogue(name: str, M: int, N: int, a_uint8: bool, out_shape=None):
    import torch
    from zsq_engine.opspec.epilogue import Epilogue
    if name == "none":
        return Epilogue(out_dtype=torch.int32, act_zero_point=128 if a_uint8 else 0)
    f32 = torch.float32
    base = dict(weight_scale=_t((N,), f32), act_scale=_t((1,), f32), act_zero_point=128 if a_uint8 else 0)
    res_shape = out_shape or (M, N)
    if name == "fp32_bias_relu":
        return Epilogue(**base, bias=_t((N,), f32), activation="relu", out_dtype=f32)
    if name == "fp16_res_relu6":
        return Epilogue(**base, residual=_t(res_shape, torch.float16), activation="relu6", out_dtype=torch.float16)
    if name == "bf16_rowscale":
        base["act_scale"] = _t((M,), f32)
        return Epilogue(**base, bias=_t((N,), f32), out_dtype=torch.bfloat16)
    if name == "requant_relu":
        return Epilogue(**base, bias=_t((N,), f32), activation="relu", out_dtype=torch.int8, out_scale=0.05)
    if name == "requant_res_wzp":
        base["act_zero_point"] = 3
        return Epilogue(**base, weight_zero_point=_t((N,), torch.int32), bias=_t((N,), f32),
                        residual=_t(res_shape, torch.int8), residual_scale=0.02, residual_zero_point=1,
                        activation="relu", out_dtype=torch.uint8, out_scale=0.05, out_zero_point=7)
    raise ValueError(f"unknown epilogue {name!r}")


def _run_gemm(aligned, kind, M, N, K, epilogue="none"):
    import torch
    from . import int_gemm as g
    u8 = torch.uint8
    a_u8 = kind in ("uint8", "w4a8_u8")
    packed_a = kind in ("w4a4", "w4a4_u")
    ka = (K + 1) // 2 if packed_a else K
    a = _t((M, ka), u8 if (a_u8 or packed_a) else torch.int8, aligned)
    ep = _epilogue(epilogue, M, N, a_u8 or kind == "w4a4_u")
    if kind in ("int8", "uint8"):
        return g.int8_gemm(a, _t((N, K), torch.int8, aligned), ep)
    w = _t((N, (K + 1) // 2), u8, aligned)
    if packed_a:
        return g.w4a4_gemm(a, w, K, ep, a_signed=kind == "w4a4")
    return g.w4a8_gemm(a, w, ep)


def _run_int_mm(aligned, M, N, K):
    import torch
    from . import int_gemm as g
    return g.int_mm(_t((M, K), torch.int8), _t((K, N), torch.int8))


def _run_conv(aligned, kind, B, H, C, O, k, stride, epilogue="none"):
    import torch
    from . import int_conv as ic
    dt = torch.uint8 if kind == "uint8" else torch.int8
    if aligned or C % 16:
        x = _t((B, H, H, C), dt)
    else:  # an NCHW tensor passed as its NHWC view (channel stride H*W)
        x = _t((B, C, H, H), dt, aligned=False).permute(0, 2, 3, 1)
    pad = k // 2
    oh = (H + 2 * pad - k) // stride + 1
    ep = _epilogue(epilogue, B * oh * oh, O, kind == "uint8", out_shape=(B, oh, oh, O))
    return ic.int8_conv2d_nhwc(x, _t((O, k, k, C), torch.int8), stride, pad, 1, 1, ep,
                               pad_value=3 if kind == "uint8" else 0)


def _run_depthwise(aligned, kind, B, H, C, k, stride, epilogue="none"):
    import torch
    from . import int_conv as ic
    dt = torch.uint8 if kind == "uint8" else torch.int8
    x = _t((B, H, H, C), dt, aligned)
    pad = k // 2
    oh = (H + 2 * pad - k) // stride + 1
    ep = _epilogue(epilogue, B * oh * oh, C, kind == "uint8", out_shape=(B, oh, oh, C))
    return ic.int8_conv2d_nhwc(x, _t((C, k, k, 1), torch.int8, aligned), stride, pad, 1, C, ep,
                               pad_value=3 if kind == "uint8" else 0)


_FQ_SHAPES = {  # (shape, axis)
    "nchw_channel": ((64, 256, 56, 56), 1),  # the LSQ headline activation
    "weight_channel": ((256, 64, 3, 3), 0),
    "tensor": ((64, 256, 56, 56), None),
    "last_axis": ((4096, 768), -1),
    "huge_tensor": ((3, 2 ** 30), None),  # > 2^31 elements: int64 offsets
}
_FLOATS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _run_fake_quant(aligned, mode, dtype, layout):
    import torch
    from . import fake_quant as fq
    shape, axis = _FQ_SHAPES[layout]
    dt = getattr(torch, _FLOATS[dtype])
    x = _t(shape, dt, aligned)
    dy = _t(shape, dt, aligned)
    c = 1 if axis is None else shape[axis]
    s, z = _t((c,), torch.float32), _t((c,), torch.float32)
    q = (-8, 7)
    if mode == "fwd":
        return fq.fq_forward(x, s, z, *q, axis)
    if mode == "ste_bwd":
        return fq.fq_backward(dy, x, s, z, *q, axis)
    if mode == "lsq_bwd":
        return fq.lsq_backward(dy, x, s, z, *q, axis, 0.01)
    if mode == "qdrop_fwd":
        return fq.qdrop_fq_forward(x, s, z, *q, axis, 0.5, 1, 0)
    if mode == "qdrop_bwd":
        return fq.qdrop_fq_backward(dy, x, s, z, *q, axis, 0.5, 1, 0)
    return fq.qdrop_lsq_backward(dy, x, s, z, *q, axis, 0.01, 0.5, 1, 0)


def _run_bn_stats(aligned, variant, big=0):
    import torch
    from zsq_engine.opspec.bn_loss import VARIANTS
    from . import bn_stats as bs
    # a ResNet-like layer mix with the three float dtypes in one launch
    shapes = [((64, 64, 112, 112), torch.float32), ((64, 256, 56, 56), torch.float16),
              ((64, 2048, 7, 7), torch.bfloat16), ((64, 1000), torch.float32)]
    if big:
        shapes.append(((256, 256, 224, 224), torch.float16))  # lane offsets need int64
    acts = [_t(s, dt) for s, dt in shapes]
    means = [_t((s[1],), torch.float32) for s, _ in shapes]
    vars_ = [_t((s[1],), torch.float32) for s, _ in shapes]
    spec = VARIANTS[variant]
    _loss, saved = bs.bn_stats_forward(acts, means, vars_, spec)
    return bs.bn_stats_backward(_t((), torch.float32), acts, saved, spec)


def _run_adaround(aligned, dtype):
    import torch
    from . import adaround as ad
    dt = getattr(torch, _FLOATS[dtype])
    shape = (256, 64, 3, 3)
    wf, alpha, dy = (_t(shape, dt, aligned) for _ in range(3))
    s, z = _t((256,), torch.float32), _t((256,), torch.float32)
    ad.adaround_forward(wf, alpha, s, z, -8, 7, 0, hard=False)
    ad.adaround_forward(wf, alpha, s, z, -8, 7, 0, hard=True)
    ad.adaround_backward(dy, wf, alpha, s, z, -8, 7, 0)
    ad.adaround_reg_forward(alpha, 2.0)
    return ad.adaround_reg_backward(_t((1,), torch.float32), alpha, 2.0)


def _run_scale_search(aligned, p):
    import torch
    from . import scale_search as ss
    x = _t((256, 64, 3, 3) if aligned else (255, 63, 3, 3), torch.float32, aligned)
    return ss.scale_search(x, -8, 7, 0, 80, p)


def _run_qdrop_mix(aligned, dtype):
    import torch
    from . import qdrop_mix as qm
    dt = getattr(torch, _FLOATS[dtype])
    shape = (64, 256, 56, 56) if aligned else (3, 5, 7, 11)
    return qm.qdrop_mix(_t(shape, dt, aligned), _t(shape, dt, aligned), 0.5, 1, 0)


def _run_uniform(aligned):
    from . import rng
    return rng.uniform(1, 2 ** 20, 0, device="meta")


_BUILDERS = {"gemm": _run_gemm, "int_mm": _run_int_mm, "conv": _run_conv, "depthwise": _run_depthwise,
             "fake_quant": _run_fake_quant,
             "bn_stats": _run_bn_stats, "adaround": _run_adaround, "scale_search": _run_scale_search,
             "qdrop_mix": _run_qdrop_mix, "uniform": _run_uniform}


# ----------------------------------------------------------------------------- capture

@dataclasses.dataclass
class Launch:
    fn: object  # the JITFunction
    args: tuple
    kwargs: dict


@contextlib.contextmanager
def _capturing(launches: List[Launch], configs: str, arch: int):
    """Record launches instead of running them; autotuned kernels record one per config that
    their pruning keeps on ``arch``."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction
    from . import _common as cm
    from . import rng

    def jit_run(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, kwargs))

    def autotune_run(self, *args, **kwargs):
        kwargs.pop("grid", None)
        kwargs.pop("warmup", None)
        kept = self.configs
        if self.early_config_prune is not None:
            kept = self.early_config_prune(self.configs, dict(zip(self.arg_names, args)), **kwargs)
        for config in (kept if configs == "all" else kept[:1]):
            self.fn.run(*args, grid=None, warmup=False, **kwargs, **config.all_kwargs())

    saved = [(JITFunction, "run", JITFunction.run), (Autotuner, "run", Autotuner.run),
             (cm, "check_device", cm.check_device), (rng, "check_device", rng.check_device),
             (cm, "target_programs", cm.target_programs), (cm, "INTERPRETER_PROGRAMS", cm.INTERPRETER_PROGRAMS),
             (cm, "device_capability", cm.device_capability)]
    JITFunction.run = jit_run
    Autotuner.run = autotune_run
    cm.check_device = rng.check_device = lambda name, t: None
    # the host heuristics' view of an H100 (they read the SM count only for CUDA tensors)
    cm.target_programs = lambda device: cm.PROGRAMS_PER_SM * H100_SMS
    cm.INTERPRETER_PROGRAMS = H100_SMS
    cm.device_capability = lambda device: divmod(arch, 10)
    try:
        yield launches
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def capture(sc: Scenario) -> List[Launch]:
    launches: List[Launch] = []
    with _capturing(launches, sc.configs, ARCHS[sc.arch]):
        _BUILDERS[sc.op](sc.aligned, **dict(sc.args))
    return launches


def _backend(arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    target = GPUTarget("cuda", arch, 32)
    return target, make_backend(target)


def specialise(launch: Launch, arch: int):
    """(signature, constexprs, attrs, options) exactly as the JIT derives them at launch."""
    from triton.runtime.jit import create_function_from_signature
    _target, backend = _backend(arch)
    fn = launch.fn
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound, spec, options)
    return signature, constexprs, attrs, options


def launch_key(launch: Launch, arch: int) -> str:
    signature, constexprs, attrs, options = specialise(launch, arch)
    return json.dumps([launch.fn.__name__, arch, signature, sorted((str(k), repr(v)) for k, v in constexprs.items()),
                       sorted((str(k), repr(v)) for k, v in attrs.items()), options.num_warps, options.num_stages])


# ----------------------------------------------------------------------------- compile + inspect

_PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "static_smem": re.compile(r"(\d+) bytes smem"),
}
_MMA = re.compile(r"\b(wgmma\.mma_async[\w.]*|mma\.sync\.aligned[\w.]*)")
_DOT_TYPE = re.compile(r"tt\.dot\b.*?:\s*tensor<[\dx]+x(\w+)")


def compile_launch(launch: Launch, arch: int) -> Dict[str, object]:
    import triton
    from triton import knobs
    from triton.compiler import ASTSource
    target, _backend_ = _backend(arch)
    signature, constexprs, attrs, options = specialise(launch, arch)
    names = launch.fn.arg_names
    const_named = {names[k[0]]: v for k, v in constexprs.items() if len(k) == 1}
    rec: Dict[str, object] = {
        "kernel": launch.fn.__name__, "module": launch.fn.__module__.rsplit(".", 1)[-1], "arch": arch,
        "num_warps": options.num_warps, "num_stages": options.num_stages,
        "constexprs": {k: v for k, v in const_named.items() if isinstance(v, (bool, int, float, str))},
        "divisible_args": sorted(names[k[0]] for k, v in attrs.items()
                                 if any(a[0] == "tt.divisibility" for a in v)),
    }
    knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    t0 = time.time()
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(launch.fn, signature, constexprs, attrs), target=target,
                                    options=options.__dict__)
    except Exception as e:  # reported, not raised: the check names the failing config
        rec.update(error=f"{type(e).__name__}: {e}"[:4000], compile_s=round(time.time() - t0, 2))
        return rec
    rec["compile_s"] = round(time.time() - t0, 2)
    text = log.getvalue()
    for key, pat in _PTXAS.items():
        m = pat.search(text)
        rec[key] = int(m.group(1)) if m else 0
    ptx, ttir = kernel.asm["ptx"], kernel.asm["ttir"]
    rec["shared"] = int(kernel.metadata.shared)
    rec["mma"] = sorted(set(_MMA.findall(ptx)))
    dots = _DOT_TYPE.findall(ttir)
    rec["dot_types"] = sorted(set(dots))
    rec["cp_async"] = len(re.findall(r"\bcp\.async\.(?:ca|cg)\b", ptx))
    rec["tma"] = len(re.findall(r"\bcp\.async\.bulk\.tensor\b", ptx))
    rec["local_ops"] = len(re.findall(r"\b(?:ld|st)\.local\b", ptx))
    return rec


def stage_bytes(rec: Dict[str, object]) -> int:
    """Bytes of the operand tiles one K step of a GEMM / conv kernel loads (packed int4 halves)."""
    c = rec["constexprs"]
    bm, bn, bk = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]
    a = bm * bk // (2 if c.get("A_KIND", 0) >= 2 else 1)
    b = bn * bk // (2 if c.get("B_PACKED", False) else 1)
    return a + b


def expected_mma(rec: Dict[str, object]) -> Optional[str]:
    """The MMA instruction prefix an int8 dot must lower to: Hopper's wgmma needs 64-row warpgroup
    tiles (BLOCK_M >= 64 and 4-warp multiples); 16-row tiles use mma.sync on both archs."""
    if not rec.get("dot_types"):
        return None
    c = rec["constexprs"]
    if rec["arch"] == 90 and c.get("BLOCK_M", 0) >= 64 and rec["num_warps"] % 4 == 0:
        return "wgmma.mma_async"
    return "mma.sync.aligned"


def problems(rec: Dict[str, object], aligned: bool = True) -> List[str]:
    """Everything wrong with one compile record (empty list: fine)."""
    if "error" in rec:
        return [f"does not compile: {rec['error']}"]
    out = []
    limit = SMEM_PER_BLOCK[rec["arch"]]
    if rec["shared"] > limit:
        out.append(f"shared memory {rec['shared']} B > {limit} B per block on sm_{rec['arch']}")
    if rec["spill_stores"] or rec["spill_loads"] or rec["local_ops"]:
        out.append(f"local memory: {rec['spill_stores']} B spill stores, {rec['spill_loads']} B spill loads, "
                   f"{rec['local_ops']} ld/st.local in the PTX")
    want = expected_mma(rec)
    if want is not None:
        types = set(rec["dot_types"])
        if types <= {"i8"}:
            ok = [m for m in rec["mma"] if m.startswith(want) and re.search(r"\.s32\.[su]8\.[su]8", m)]
        else:  # fp16 / bf16 dots: any tensor-core form of the expected family
            ok = [m for m in rec["mma"] if m.startswith(want)]
        if not ok:
            out.append(f"dot {sorted(types)} should lower to {want} (int8: .s32.s8.s8), PTX has {rec['mma']}")
        if aligned and rec["num_stages"] > 1:
            need = (rec["num_stages"] - 1) * stage_bytes(rec)
            if not (rec["cp_async"] or rec["tma"]):
                out.append(f"K loop not software-pipelined: no cp.async / TMA in the PTX (num_stages="
                           f"{rec['num_stages']})")
            elif rec["shared"] < need:
                out.append(f"shared memory {rec['shared']} B < (num_stages - 1) x stage tiles = {need} B: "
                           "the operands are not multi-buffered")
    return out


def config_label(rec: Dict[str, object]) -> str:
    """GEMM / conv tiles as BMxBNxBK, other kernels' block constexprs by name, then warps / stages."""
    c = rec["constexprs"]
    if all(k in c for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")):
        tiles = "x".join(str(c[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    else:
        tiles = " ".join(f"{k[len('BLOCK_'):]}{v}" for k, v in c.items() if k.startswith("BLOCK"))
    return f"{tiles} w{rec['num_warps']} s{rec['num_stages']}"


# ----------------------------------------------------------------------------- driver

_WORKER_CACHE: Dict[str, List[Launch]] = {}


def _compile_task(task: Tuple[Scenario, int]) -> Dict[str, object]:
    sc, index = task
    if sc.id not in _WORKER_CACHE:
        _WORKER_CACHE[sc.id] = capture(sc)
    return compile_launch(_WORKER_CACHE[sc.id][index], ARCHS[sc.arch])


def run_all(selected: List[Scenario], jobs: int = 2) -> Dict[str, object]:
    """Capture every scenario, compile each distinct launch once (a pool of ``jobs`` processes)."""
    import multiprocessing

    import triton
    t0 = time.time()
    keys: Dict[str, int] = {}
    tasks: List[Tuple[Scenario, int]] = []
    per_scenario: Dict[str, List[int]] = {}
    for sc in selected:
        ids = []
        for i, launch in enumerate(capture(sc)):
            key = launch_key(launch, ARCHS[sc.arch])
            if key not in keys:
                keys[key] = len(tasks)
                tasks.append((sc, i))
            ids.append(keys[key])
        per_scenario[sc.id] = ids
    capture_s = time.time() - t0
    # big GEMM / conv compiles first, so the pool's tail is short
    order = sorted(range(len(tasks)), key=lambda i: tasks[i][0].op not in ("gemm", "conv"))
    records: List[Optional[Dict[str, object]]] = [None] * len(tasks)
    if jobs <= 1:
        for i in order:
            records[i] = _compile_task(tasks[i])
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for i, rec in zip(order, pool.map(_compile_task, [tasks[i] for i in order], chunksize=1)):
                records[i] = rec
    scen = {sc.id: {"aligned": sc.aligned, "arch": sc.arch, "op": sc.op, "args": dict(sc.args),
                    "compiles": per_scenario[sc.id]} for sc in selected}
    return {"triton": triton.__version__, "jobs": jobs, "capture_s": round(capture_s, 1),
            "wall_s": round(time.time() - t0, 1), "compiles": records, "scenarios": scen}


def run_in_subprocess(out_path: str, jobs: int = 2, only: Optional[List[str]] = None,
                      timeout: Optional[float] = None) -> Dict[str, object]:
    """Run :func:`run_all` in a fresh interpreter without TRITON_INTERPRET (the caller's process
    may have decorated the kernels for the interpreter) and return its JSON."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.pop("ZSQ_AUTOTUNE", None)
    cmd = [sys.executable, "-m", "zsq_engine.kernels.aot", "--out", out_path, "--jobs", str(jobs)]
    for sid in only or []:
        cmd += ["--only", sid]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"AOT compile run failed ({run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    with open(out_path) as f:
        return json.load(f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Compile every GPU-path Triton kernel for sm_90a / sm_80 (no GPU).")
    parser.add_argument("--out", help="JSON file for the compile records (required unless --list)")
    parser.add_argument("--jobs", type=int, default=2, help="compile processes (default 2)")
    parser.add_argument("--only", action="append", default=[], help="scenario id (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the scenario ids and exit")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: the interpreter's kernels are not the GPU path")
    os.environ.pop("ZSQ_AUTOTUNE", None)  # compile every config, not the quick-run pin
    selected = scenarios()
    if args.list:
        print("\n".join(sc.id for sc in selected))
        return 0
    if not args.out:
        parser.error("--out is required")
    if args.only:
        unknown = set(args.only) - {sc.id for sc in selected}
        if unknown:
            parser.error(f"unknown scenario ids: {sorted(unknown)}")
        selected = [sc for sc in selected if sc.id in args.only]
    # A private, empty Triton cache: a cached kernel is not recompiled, and only a compile
    # prints the ptxas report (registers, spills) this run is for.
    with tempfile.TemporaryDirectory(prefix="zsq-aot-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        result = run_all(selected, args.jobs)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    bad = sum(1 for r in result["compiles"] if "error" in r)
    print(f"{len(result['compiles'])} kernel x config compiles ({bad} failed) for {len(selected)} scenarios "
          f"in {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
