"""Mixed precision with Genie-M: pick among a few candidate bit plans by the reconstructed model's
output KL on the SYNTHETIC images (docs/accuracy.md, "Synthesis-free and mixed precision").

    python benchmarks/synth_free_mixed_select.py --synth synth.pt --bits W4A4 [--candidates ...]

Every candidate has the same budget as uniform ``--bits`` ('size' mode: average weight bits per
parameter and, separately, average input-activation bits per element, first / last layer
included, measured on the uniform model with its first / last layer at 8 bits):

* uniform: ``--bits`` everywhere, first / last layer W8A8 (the uniform row itself);
* kl: ZeroQ KL sensitivities (nearest rounding), weights {2,3,4,6,8}, activations {4,6,8} - the
  ``synth_free_accuracy.py --mixed`` plan;
* kl-a3: the same weights, activations from {3,4,6,8}: a 3-bit input somewhere pays for 6 / 8
  bits elsewhere (with {4,6,8} a 4.00-bit activation budget leaves no room to move);
* a3-only: weights as uniform (4 bits inside, 8 first / last), activations as kl-a3.
* bops: one joint (weight, activation) choice per layer under the uniform model's BOPs.

Each candidate is reconstructed by Genie-M (fast preset, the same images and seed) and scored by
``bit_allocation.output_kl`` against the float model on the synthetic images; the lowest score is
the selected plan. Test accuracy is printed for every candidate, but the selection never reads it.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from zsq_engine.data.sources import fmnist_batches
from zsq_engine.evaluation import evaluate_accuracy
from zsq_engine.models import get_model
from zsq_engine.quant import quantize_model
from zsq_engine.quant.bit_allocation import average_bits, layer_costs, layer_sensitivity, output_kl, plan_bits
from zsq_engine.recon import reconstruct_model
from zsq_engine.synth.io import load_output

CANDIDATES = ("uniform", "kl", "kl-a3", "a3-only", "bops")


def drop_bits(sens, kind, bits):
    """``sens`` without the ``(kind, bits)`` entries (narrows the candidate widths)."""
    return {n: {k: v for k, v in d.items() if k != (kind, bits)} for n, d in sens.items()}


def make_plans(model, images, wbits, abits, names):
    ref = quantize_model(model, wbits, abits).eval()
    costs = layer_costs(ref, images)
    target = average_bits(ref, costs)
    sens = layer_sensitivity(model, images, act_bits=(3, 4, 6, 8), weight_method="mse", act_method="mse")
    sens_a4 = drop_bits(sens, "a", 3)
    plans = {}
    w_plan = plan_bits(sens, costs, target["weight"], mode="size")
    for name in names:
        if name == "uniform":
            plans[name] = None
        elif name == "kl":
            a = plan_bits(sens_a4, costs, target["act"], mode="size")
            plans[name] = {n: (w_plan[n][0], a[n][1]) for n in w_plan}
        elif name in ("kl-a3", "a3-only"):
            a = plan_bits(sens, costs, target["act"], mode="size")
            uniform_w = {n: layer.weight_bits for n, layer in ref.named_modules() if n in a}
            plans[name] = {n: (w_plan[n][0] if name == "kl-a3" else uniform_w[n], a[n][1]) for n in a}
        elif name == "bops":
            plans[name] = plan_bits(sens, costs, target["bops_bits"], mode="bops")
    return plans, costs, target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synth", required=True, help="file from `zsq synthesize --model fmnist_resnet`")
    p.add_argument("--bits", default="W4A4")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help=f"comma-separated subset of {CANDIDATES}")
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    names = args.candidates.split(",")
    bad = [n for n in names if n not in CANDIDATES]
    if bad:
        p.error(f"--candidates: unknown {bad}, expected some of {CANDIDATES}")
    if args.threads:
        torch.set_num_threads(args.threads)
    wbits, abits = (int(v) for v in args.bits.upper().lstrip("W").split("A"))
    torch.manual_seed(args.seed)
    model = get_model("fmnist_resnet", pretrained=True).eval()
    images = load_output(args.synth)["images"][: args.num].float()
    t0 = time.perf_counter()
    plans, costs, target = make_plans(model, images, wbits, abits, names)
    print(json.dumps({"target_bits": target, "plan_seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    test = fmnist_batches("test", 256, None)
    scores = {}
    for name, plan in plans.items():
        t0 = time.perf_counter()
        q = reconstruct_model(model, images, wbits, abits, method="genie", preset="fast", iters=args.iters,
                              seed=args.seed, show_progress=False, layer_bits=plan).model
        scores[name] = output_kl(q, model, images)
        acc = evaluate_accuracy(q, test, desc="test", show_progress=False)
        print(json.dumps({"candidate": name, "synthetic_kl": scores[name], "accuracy": round(acc, 2),
                          "achieved_bits": average_bits(q, layer_costs(q, images)), "plan": plan,
                          "seconds": round(time.perf_counter() - t0, 1)}, default=str), flush=True)
    best = min(scores, key=scores.get)
    print(json.dumps({"selected": best, "by": "synthetic_kl", "scores": scores}), flush=True)


if __name__ == "__main__":
    main()
