"""EfficientNet-Lite0 rows of docs/accuracy.md "Synthesis-free and mixed precision" - no data at all.

    python benchmarks/synth_free_imagenet.py --val-dir DIR --method naive|dfq|squant|dfq-squant --bits W8A8

``--method`` and ``--bits`` take comma-separated lists: every combination is one row (one JSON
line), the images are decoded once.

Every row is data-free: weights from the checkpoint, activation ranges from the BN statistics
(synth_free.set_bn_activation_ranges, beta +- 6 gamma through the activations), so the rows differ
only in the weight-side method. The images under --val-dir are only evaluated (top-1).
"""
from __future__ import annotations

import argparse
import json
import time


from zsq_engine.data.sources import imagefolder_batches
from zsq_engine.evaluation import evaluate_accuracy
from zsq_engine.models import get_model
from zsq_engine.quant import quantize_model
from zsq_engine.quant.squant import apply_squant
from zsq_engine.synth_free import bias_correct, dfq, set_bn_activation_ranges

METHODS = ("fp", "naive", "dfq", "squant", "dfq-squant")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--val-dir", required=True)
    p.add_argument("--method", required=True, help=f"one or more of {METHODS}, comma-separated")
    p.add_argument("--bits", default="W8A8", help="one or more of W8A8, W4A8, ..., comma-separated")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--dfq-pairs", default="all", choices=("all", "useful"),
                   help="DFQ pairs: all (default) or useful (skip pairs whose per-channel weight grids equalisation "
                        "cannot change; measured worse on EfficientNet-Lite0 W8A8, docs/accuracy.md)")
    p.add_argument("--no-absorb", action="store_true", help="DFQ without high-bias absorption")
    p.add_argument("--num-std", type=float, default=6.0)
    args = p.parse_args()
    methods = args.method.split(",")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"--method: unknown {bad}, expected some of {METHODS}")
    bits = [tuple(int(v) for v in b.upper().lstrip("W").split("A")) for b in args.bits.split(",")]
    model = get_model("efficientnet_lite0", pretrained=True).eval()
    # WordNet-id folders are labelled with their ImageNet-1k indices by the loader itself
    test = [(x, y) for x, y in imagefolder_batches(args.val_dir, "efficientnet_lite0", 50, args.limit)]
    for method in methods:
        for wbits, abits in ([(32, 32)] if method == "fp" else bits):
            row(model, test, method, wbits, abits, args.num_std, args.dfq_pairs == "useful", not args.no_absorb)


def row(model, test, method: str, wbits: int, abits: int, num_std: float, useful_pairs: bool,
        absorb: bool = True) -> None:
    t0 = time.perf_counter()
    if method == "fp":
        q = model
    else:
        base = dfq(model, per_channel_weights=useful_pairs, absorb_bias=absorb) if method.startswith("dfq") else model
        q = quantize_model(base, wbits, abits, weight_method="mse").eval()
        if method.endswith("squant"):
            apply_squant(q)
        if method.startswith("dfq"):
            bias_correct(q, base)
        done = set_bn_activation_ranges(q, base, num_std)
        missing = [n for n, m in q.named_modules() if getattr(m, "act_quantizer", None) is not None
                   and n not in done]
        if missing:
            raise SystemExit(f"no BN-derived range for {missing}")
    seconds = time.perf_counter() - t0
    acc = evaluate_accuracy(q, test, desc="test", show_progress=False)
    print(json.dumps({"model": "efficientnet_lite0", "method": method,
                      "bits": "FP32" if method == "fp" else f"W{wbits}A{abits}",
                      "dfq_pairs": ("useful" if useful_pairs else "all") if method.startswith("dfq") else None,
                      "dfq_absorb": absorb if method.startswith("dfq") else None,
                      "accuracy": round(acc, 2), "prepare_seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
