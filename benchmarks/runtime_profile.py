"""Where an integer-model forward spends its time outside the kernels (docs/runtime.md, issue 22).

    python -m benchmarks.runtime_profile --model fmnist_resnet                 # per-step table
    python -m benchmarks.runtime_profile --model resnet18 --size 64 --stem8    # 8-bit input
    python -m benchmarks.runtime_profile --model resnet18 --size 64 --stem8 --compare

Per program step (markdown table): its time as the step-by-step interpreter runs it
(``IntModel.run``), as the static plan runs it, and the layer's prepared C++ call alone on the
same input (hot weights). ``--compare``: the whole forward of three copies of the same model,
step-by-step / plan with separate quantize passes / plan with the codes fused into the
producing epilogue, timed round-robin in one process (ratios from one run; prints, writes nothing).
Naive PTQ, random weights except the Fashion-MNIST ResNet; one thread unless ``--threads``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def _model(name: str, size: int, bits: int, stem8: bool):
    from benchmarks.runtime import _calibration
    from zsq_engine.models import get_model
    from zsq_engine.quant import naive_ptq

    shape = (1, 28, 28) if name == "fmnist_resnet" else (3, size, size)
    torch.manual_seed(0)
    fp = get_model(name, pretrained=name == "fmnist_resnet").eval()
    calib = _calibration(name, shape, 16)
    return naive_ptq(fp, calib, bits, bits, progress=False, quantize_first_input=stem8).eval(), torch.cat(calib)


def _median_us(ts) -> float:
    return statistics.median(ts) * 1e6


@torch.no_grad()
def profile(q, x: torch.Tensor, repeats: int) -> str:
    from zsq_engine.runtime import convert

    im = convert(q)
    im(x)
    im(x)
    plan = next(iter(im._plans.values()))
    n = len(im.program)
    t_step, t_plan = [[] for _ in range(n)], [[] for _ in range(n)]
    for _ in range(repeats):
        env = {im.input_slot: x.float()}
        for i, (s, fn) in enumerate(zip(im.program, im._steps)):
            t = time.perf_counter()
            env[s["out"]] = fn(env)
            t_step[i].append(time.perf_counter() - t)
        penv = {plan.input_slot: x}
        for i, (out, fn, _) in enumerate(plan.steps):
            t = time.perf_counter()
            penv[out] = fn(penv)
            t_plan[i].append(time.perf_counter() - t)
    t_kernel = {}
    for i, s in enumerate(im.program):
        layer = im.layers[s["layer"]] if s["op"] in ("conv", "linear") else None
        if layer is None or layer._launch is None:
            continue
        res = env[s["residual"]] if s["residual"] else None
        if res is not None and res.dim() == 4 and layer.residual_q is None:
            res = res.permute(0, 2, 3, 1)
        buf = layer._launch(env[s["in"]], res)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            layer._launch(env[s["in"]], res, out=buf)
            ts.append(time.perf_counter() - t)
        t_kernel[i] = _median_us(ts)
    lines = ["| step | op | out shape | step-by-step us | plan us | kernel us |", "|---|---|---|---|---|---|"]
    sums = [0.0, 0.0, 0.0]
    for i, s in enumerate(im.program):
        a, b, k = _median_us(t_step[i]), _median_us(t_plan[i]), t_kernel.get(i)
        sums[0] += a
        sums[1] += b
        sums[2] += k or 0.0
        v = env[s["out"]]
        shape = f"{tuple(v.shape)} {str(v.dtype).replace('torch.', '')}"
        lines.append(f"| {s.get('layer', s['out'])} | {s['op']} | {shape} | {a:.0f} | {b:.0f} | "
                     f"{'' if k is None else f'{k:.0f}'} |")
    lines.append(f"| **sum** | | | {sums[0]:.0f} | {sums[1]:.0f} | {sums[2]:.0f} |")
    return "\n".join(lines)


@torch.no_grad()
def compare(q, x: torch.Tensor, rounds: int, calls: int) -> str:
    from zsq_engine.runtime import convert

    variants = {}
    for label, plan, fuse in (("step-by-step", False, False), ("plan, separate quantize", True, False),
                              ("plan + fused codes", True, True)):
        im = convert(q)
        im.use_plan, im.fuse_codes = plan, fuse
        variants[label] = im
    outs = [im(x) for im in variants.values()] + [im(x) for im in variants.values()]
    if not all(torch.equal(outs[0], o) for o in outs):
        raise AssertionError("the variants disagree: the plan must reproduce the step-by-step run bit for bit")
    times = {k: [] for k in variants}
    keys = list(variants)
    for r in range(rounds):
        for k in keys if r % 2 == 0 else keys[::-1]:
            ts = []
            for _ in range(calls):
                t = time.perf_counter()
                variants[k](x)
                ts.append(time.perf_counter() - t)
            times[k].append(statistics.median(ts) * 1e3)
    base = statistics.median(times["step-by-step"])
    return "; ".join(f"{k} {statistics.median(v):.3f} ms ({base / statistics.median(v):.2f}x)" for k, v in times.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="fmnist_resnet")
    ap.add_argument("--size", type=int, default=224, help="input size of the ImageNet models")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--stem8", action="store_true", help="quantize the first layer's input too (8-bit input)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--compare", action="store_true", help="time step-by-step / plan / plan + fused codes")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    q, images = _model(args.model, args.size, args.bits, args.stem8)
    x = images[:args.batch].contiguous()
    title = (f"{args.model} {tuple(x.shape[1:])} batch {args.batch} W{args.bits}A{args.bits}"
             f"{' 8-bit input' if args.stem8 else ''}, {args.threads} thread(s)")
    print(f"### {title}")
    print(compare(q, x, 15, 20) if args.compare else profile(q, x, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
