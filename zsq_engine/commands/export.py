"""``zsq export``: a fake-quant model -> a QDQ ONNX file (ONNX Runtime, TensorRT, OpenVINO)."""
from __future__ import annotations

import argparse

import torch

from . import common, eval_data, guard
from .convert import add_source_args, check_source_args, source_models

_EPILOG = """the fake-quant model comes from --checkpoint (zsq quantize / zsq qat) or naive PTQ here
(--model, --wbits, --abits; see `zsq convert --help`). The graph: QuantizeLinear / DequantizeLinear
pairs with the model's own activation grids, per-channel int8 weights (BN folded), int32 biases
where an engine fuses the layer, float where the model is float (first-layer input by default,
residual adds, logits). Opset 13; --int4-weights stores weights of <= 4 bits as INT4 (opset 21).
--check runs the file in ONNX Runtime (CPU) on Fashion-MNIST test images and reports the top-1
agreement with the fake-quant model and the integer operators ONNX Runtime fused. See docs/export.md.
examples:
  zsq export --checkpoint q.pt --out model.onnx --check
  zsq export --model fmnist_resnet --wbits 4 --abits 4 --out w4a4.onnx
  zsq export --model resnet18 --input-size 224 --out r18.onnx
  trtexec --onnx=model.onnx --int8        (TensorRT, on a GPU machine)"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a fake-quant model as a QDQ ONNX graph",
        description="Write the fake-quant model (from `zsq quantize`, `zsq qat` or naive PTQ done here) as a "
                    "standard QDQ ONNX graph of the same function (the bias of a layer an engine fuses is "
                    "rounded onto the int32 accumulator grid, as the engines do; see docs/export.md).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(p)
    p.add_argument("--out", required=True, help="output .onnx file (written only when the export succeeds)")
    common.add_overwrite_arg(p, "--out")
    p.add_argument("--int4-weights", action="store_true",
                   help="store weights of <= 4 bits as INT4 initializers (opset 21); default: int8 holding the codes")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 13, 21 with --int4-weights)")
    p.add_argument("--input-size", type=common.positive_int, default=None,
                   help="spatial input size H = W of the graph (default: the model's own)")
    p.add_argument("--check", action="store_true",
                   help="run the file in ONNX Runtime on Fashion-MNIST test images (fmnist_resnet only)")
    p.add_argument("--check-limit", type=common.positive_int, default=2000,
                   help="--check on the first N test images (default 2000)")
    common.add_data_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zsq_engine.export import to_onnx

    check_source_args(args)
    guard.check_positive(args, "batch_size")
    if args.check and not args.checkpoint and (args.model or "fmnist_resnet") != "fmnist_resnet":
        _no_check(args.model)  # before the quantization
    out = guard.output_file(args.out, "--out", overwrite=args.overwrite, inputs=[args.checkpoint, args.weights])
    if args.check or (not args.checkpoint and (args.model or "fmnist_resnet") == "fmnist_resnet"):
        from .quantize import check_eval_data

        check_eval_data("fmnist_resnet", args.data_dir, need_train=not args.checkpoint)
    torch.manual_seed(args.seed)
    name, _, qmodel, meta, _ = source_models(args)
    if args.check and name != "fmnist_resnet":
        _no_check(name)
    shape = list(eval_data.model_info(args, name).input_shape)
    if args.input_size:
        shape[1:] = [args.input_size, args.input_size]
    with guard.writing(out):
        info = to_onnx(qmodel, torch.zeros(1, *shape), out, int4_weights=args.int4_weights, opset=args.opset)
    print(f"zsq export: {name} ({meta['source']}, W{meta['wbits']}A{meta['abits']}) -> {args.out}: opset "
          f"{info['opset']}, {info['nodes']} nodes, {info['layers']} quantized layers "
          f"({len(info['int_bias_layers'])} with int32 bias for fused integer kernels, {info['int4_weights']} INT4 "
          f"weights), {info['quantize_pairs']} activation QDQ pairs")
    if args.check:
        _check(qmodel, args)
    return 0


def _no_check(name: str) -> None:
    raise guard.UsageError("--check needs the Fashion-MNIST test set", f"--model {name}",
                           "only fmnist_resnet has a built-in test set here", "drop --check")


def _check(qmodel, args) -> None:
    from zsq_engine.export import ort

    from ..data.sources import fmnist_batches

    sess = ort.session(args.out)
    agree = total = 0
    for x, _ in fmnist_batches("test", args.batch_size, args.data_dir):
        x = x[: args.check_limit - total]
        with torch.no_grad():
            ref = qmodel(x)
        agree += int((ort.run(sess, x).argmax(1) == ref.argmax(1)).sum())
        total += x.shape[0]
        if total >= args.check_limit:
            break
    ops = ort.optimized_op_counts(args.out)
    fused = {k: v for k, v in ops.items() if k in ort.INTEGER_OPS}
    print(f"check (ONNX Runtime CPU) on {total} test images: top-1 agreement with the fake-quant model "
          f"{100.0 * agree / total:.2f} %; integer operators after ONNX Runtime's optimisation: {fused or 'none'}, "
          f"float Conv / FusedConv left: {ops.get('Conv', 0) + ops.get('FusedConv', 0)}")
