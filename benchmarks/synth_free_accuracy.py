"""Accuracy of the synthesis-free methods (docs/accuracy.md rows): the Fashion-MNIST ResNet on its
test split, or any registered model on an ImageFolder (``--model efficientnet_lite0 --val-dir DIR``,
WordNet-id folders scored with the ImageNet-1k indices).

One row per call::

    python benchmarks/synth_free_accuracy.py --method naive|dfq|squant|dfq-squant|genie|dfq-genie \
        --bits W4A4 --synth synth.pt [--mixed] [--seed 0] [--model M --val-dir DIR]

* naive: quantize_model (weights: Lp search, activations: 'mse' observer) + activation ranges
  calibrated on the synthetic images - the zero-shot naive baseline every row shares.
* dfq: synth_free.dfq (equalisation + high-bias absorption) + bias correction, then as naive.
* squant: naive with SQuant-rounded weights (quant.squant.apply_squant); dfq-squant: both.
* genie / dfq-genie: Genie-M block reconstruction (fast preset) from the same images.
* --act-init bn: activation ranges from the BN statistics (synth_free.set_bn_activation_ranges,
  DFQ's data-free ranges) instead of the 'mse' observer on the synthetic images, wherever the BN
  statistics determine them; for genie rows that is where reconstruction starts (act_init='bn').
* --bias-correct: genie rows start from bias-corrected weights (synth_free.bias_correct, as
  the dfq rows do); reconstruction keeps those biases.
* --mixed: per-layer bits from bit_allocation (KL sensitivities on the synthetic images, exact
  solver) at the average bits ('size' budget) of the uniform configuration given by --bits,
  first/last layer included in that average.
Weights are never fitted to the images except by Genie; the test split is only evaluated.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from zsq_engine.data.sources import fmnist_batches
from zsq_engine.commands.eval_data import folder_dataset
from zsq_engine.evaluation import evaluate_accuracy
from zsq_engine.models import get_model, get_model_info
from zsq_engine.quant import calibrate_activations, quantize_model
from zsq_engine.quant.bit_allocation import (apply_bit_plan, average_bits, layer_costs, layer_sensitivity, plan_bits,
                                              weight_kl)
from zsq_engine.quant.squant import apply_squant
from zsq_engine.recon import reconstruct_model
from zsq_engine.synth.io import load_output
from zsq_engine.synth_free import bias_correct, dfq, set_bn_activation_ranges

METHODS = ("naive", "dfq", "squant", "dfq-squant", "genie", "dfq-genie")


def recon_weight_sensitivity(base, images, sens, args):
    """Replace the weight entries of ``sens`` by the KL of each layer's RECONSTRUCTED weights:
    for every candidate width b, Genie-M reconstructs the whole model at Wb A8 (every layer at b,
    first and last included) and each layer's learnt rounding is switched on alone. Ranks layers
    by what reconstruction leaves of their error, not by what nearest rounding does."""
    widths = sorted({b for v in sens.values() for k, b in v if k == "w"})
    out = {n: dict(v) for n, v in sens.items()}
    for b in widths:
        q = reconstruct_model(base, images, b, 8, method="genie", preset="fast", iters=args.iters, seed=args.seed,
                              show_progress=False, first_last_bits=None).model
        for name, kl in weight_kl(q, base, images).items():
            if name in out:
                out[name][("w", b)] = kl
    return out


def load_plan(path: str, key: dict):
    """The plan saved in ``path`` by an earlier call with the same ``key``, else None (no file).
    A file written for other settings is refused rather than silently reused."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    if saved.get("key") != key:
        raise SystemExit(f"--plan-file {path} holds a plan for {saved.get('key')}, not for {key}")
    return {n: tuple(v) for n, v in saved["plan"].items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--bits", default="W4A4")
    p.add_argument("--model", default="fmnist_resnet", help="registered model (default fmnist_resnet)")
    p.add_argument("--val-dir", default=None, help="ImageFolder to evaluate on (required for models other than "
                                                   "fmnist_resnet)")
    p.add_argument("--synth", required=True, help="file from `zsq synthesize --model <the same model>`")
    p.add_argument("--iters", type=int, default=None, help="Genie-M iterations per unit (default: fast preset)")
    p.add_argument("--num", type=int, default=256, help="synthetic images used (default 256)")
    p.add_argument("--mixed", action="store_true", help="per-layer bits at the average bits of --bits")
    p.add_argument("--budget-mode", default="size", choices=("size", "bops"))
    p.add_argument("--sensitivity", default="kl", choices=("kl", "recon"),
                   help="weight sensitivities of --mixed: kl (ZeroQ: nearest rounding) or recon (KL after a "
                        "Genie-M reconstruction of the whole model at each candidate weight width)")
    p.add_argument("--plan-file", default=None,
                   help="--mixed: reuse the plan stored in this JSON file by an earlier call with the same model, "
                        "base (float / DFQ), bits, budget, sensitivity and images; write it there when absent "
                        "(the sensitivities do not depend on the weight rounding method that follows)")
    p.add_argument("--dfq-pairs", default="all", choices=("all", "useful"),
                   help="DFQ pairs: all (default) or useful (skip pairs whose per-channel weight grids equalisation "
                        "cannot change; measured worse on EfficientNet-Lite0 W8A8, docs/accuracy.md)")
    p.add_argument("--no-absorb", action="store_true", help="DFQ without high-bias absorption")
    p.add_argument("--act-init", default="data", choices=("data", "bn"),
                   help="activation ranges: data ('mse' observer on the synthetic images, default) or bn (from the "
                        "BN statistics where they determine them, the rest from the images)")
    p.add_argument("--bias-correct", action="store_true",
                   help="genie rows: DFQ's analytic bias correction before reconstruction (dfq rows always have it)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-limit", type=int, default=None)
    args = p.parse_args()
    wbits, abits = (int(v) for v in args.bits.upper().lstrip("W").split("A"))
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model != "fmnist_resnet" and not args.val_dir:
        p.error(f"--val-dir is required for --model {args.model}")
    model = get_model(args.model, pretrained=True).eval()
    images = load_output(args.synth)["images"][: args.num].float()
    calib = [images[i:i + 128] for i in range(0, images.shape[0], 128)]
    t0 = time.perf_counter()
    base = dfq(model, per_channel_weights=args.dfq_pairs == "useful", absorb_bias=not args.no_absorb) if args.method.startswith("dfq") else model
    plan = None
    info = {}
    if args.mixed:
        ref = quantize_model(base, wbits, abits).eval()
        costs = layer_costs(ref, images)
        target = average_bits(ref, costs)
        budget = target["weight"] if args.budget_mode == "size" else target["bops_bits"]
        key = {"model": args.model, "base": "dfq" if args.method.startswith("dfq") else "float", "bits": args.bits,
               "budget_mode": args.budget_mode, "sensitivity": args.sensitivity, "synth": args.synth, "num": args.num}
        saved = load_plan(args.plan_file, key) if args.plan_file else None
        if saved is None:
            sens = layer_sensitivity(base, images, weight_method="mse", act_method="mse")
            if args.sensitivity == "recon":
                sens = recon_weight_sensitivity(base, images, sens, args)
            plan = plan_bits(sens, costs, budget, mode=args.budget_mode)
            # the activation budget of 'size' mode is the uniform model's activation average
            if args.budget_mode == "size":
                act_plan = plan_bits(sens, costs, target["act"], mode="size")
                plan = {n: (plan[n][0], act_plan[n][1]) for n in plan}
            if args.plan_file:
                with open(args.plan_file, "w") as f:
                    json.dump({"key": key, "plan": plan}, f)
        else:
            plan = saved
            info["plan_from"] = args.plan_file
        info["target_bits"] = target
        info["plan"] = plan
    if args.method.endswith("genie"):
        q = reconstruct_model(base, images, wbits, abits, method="genie", preset="fast", iters=args.iters, seed=args.seed,
                              show_progress=False, layer_bits=plan, act_init=args.act_init,
                              bias_correction=args.bias_correct).model
    else:
        q = quantize_model(base, wbits, abits, weight_method="mse", act_method="mse").eval()
        if plan:
            apply_bit_plan(q, plan)
        if args.method.endswith("squant"):
            info["squant_flips"] = sum(apply_squant(q).values())
        if args.method.startswith("dfq"):
            bias_correct(q, base)
        calibrate_activations(q, calib, progress=False)
        if args.act_init == "bn":
            info["bn_ranges"] = len(set_bn_activation_ranges(q, base))
    seconds = time.perf_counter() - t0
    if plan:
        info["achieved_bits"] = average_bits(q, layer_costs(q, images))
    if args.val_dir:
        from torch.utils.data import DataLoader, Subset

        ds = folder_dataset(args.val_dir, get_model_info(args.model))
        if args.eval_limit:
            ds = Subset(ds, range(min(args.eval_limit, len(ds))))
        test = DataLoader(ds, batch_size=50)
    else:
        test = fmnist_batches("test", 256, None)
        if args.eval_limit:
            test = [b for b in test][: -(-args.eval_limit // 256)]
    acc = evaluate_accuracy(q, test, desc="test", show_progress=False)
    row = {"model": args.model, "method": args.method, "bits": args.bits, "mixed": args.mixed,
           "dfq_absorb": not args.no_absorb if args.method.startswith("dfq") else None,
           "sensitivity": args.sensitivity if args.mixed else None, "act_init": args.act_init,
           "bias_correct": args.bias_correct or (args.method.startswith("dfq") and not args.method.endswith("genie")),
           "accuracy": round(acc, 2),
           "seconds": round(seconds, 1), **info}
    print(json.dumps(row, default=str))


if __name__ == "__main__":
    main()
