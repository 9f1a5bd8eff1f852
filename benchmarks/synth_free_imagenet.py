"""EfficientNet-Lite0 rows of docs/accuracy.md "Synthesis-free and mixed precision" - no data at all.

    python benchmarks/synth_free_imagenet.py --val-dir DIR --method naive|dfq|squant|dfq-squant --bits W8A8

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
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--bits", default="W8A8")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--num-std", type=float, default=6.0)
    args = p.parse_args()
    wbits, abits = (int(v) for v in args.bits.upper().lstrip("W").split("A"))
    model = get_model("efficientnet_lite0", pretrained=True).eval()
    t0 = time.perf_counter()
    if args.method == "fp":
        q = model
    else:
        base = dfq(model) if args.method.startswith("dfq") else model
        q = quantize_model(base, wbits, abits, weight_method="mse").eval()
        if args.method.endswith("squant"):
            apply_squant(q)
        if args.method.startswith("dfq"):
            bias_correct(q, base)
        done = set_bn_activation_ranges(q, base, args.num_std)
        missing = [n for n, m in q.named_modules() if getattr(m, "act_quantizer", None) is not None
                   and n not in done]
        if missing:
            raise SystemExit(f"no BN-derived range for {missing}")
    seconds = time.perf_counter() - t0
    # WordNet-id folders are labelled with their ImageNet-1k indices by the loader itself
    test = [(x, y) for x, y in imagefolder_batches(args.val_dir, "efficientnet_lite0", 50,
                                                                      args.limit)]
    acc = evaluate_accuracy(q, test, desc="test", show_progress=False)
    print(json.dumps({"model": "efficientnet_lite0", "method": args.method, "bits": args.bits,
                      "accuracy": round(acc, 2), "prepare_seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
