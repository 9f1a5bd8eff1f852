"""Re-expressed convolutions, forward + backward: ``ops.upsample2x_conv3x3`` against nearest x2
upsample then ``F.conv2d`` and ``ops.conv3x3_narrow`` against ``F.conv2d`` (oneDNN on CPU, cuDNN
on CUDA), at the generator and stem shapes where the QAT loop uses them.

    python -m benchmarks.conv_forms --device cpu      # batch 64, Fashion-MNIST generator / stem
    python -m benchmarks.conv_forms --device cuda     # also the 224x224 generator of ResNet-18
    python -m benchmarks.conv_forms --quick           # batch 8, nothing written

Columns: ``peer_ms`` (the library convolution), ``zsq_ms``, ``speedup``, and the multiply-adds
each side does, as GFLOP/s of the *upsampled / full* convolution (the work both compute), and as
the fraction of the machine's peak given with ``--peak-gflops`` (none by default: CPU peaks vary).
Rows go to benchmarks/results/conv_forms.jsonl.
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from benchmarks import harness
from zsq_engine import ops


def _upsample_then_conv(x, w, b):
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)


def _conv(x, w, b):
    return F.conv2d(x, w, b, padding=1)


# (name, op, C_in, C_out, input H = W): the QAT generators' upsampling / output convs and stems
CPU_CASES = [
    ("gen conv1 (up 7->14)", "upsample2x_conv3x3", 128, 128, 7),
    ("gen conv2 (up 14->28)", "upsample2x_conv3x3", 128, 64, 14),
    ("gen conv3 (64->1)", "conv3x3_narrow", 64, 1, 28),
    ("fmnist stem (1->16)", "conv3x3_narrow", 1, 16, 28),
    ("cifar stem (3->16)", "conv3x3_narrow", 3, 16, 32),
    ("cifar stem (3->64)", "conv3x3_narrow", 3, 64, 32),
]
CUDA_CASES = CPU_CASES[:2] + [
    ("gen224 conv1 (up 56->112)", "upsample2x_conv3x3", 128, 128, 56),
    ("gen224 conv2 (up 112->224)", "upsample2x_conv3x3", 128, 64, 112),
    ("gen224 conv3 (64->3)", "conv3x3_narrow", 64, 3, 224),
]
OPS = {"upsample2x_conv3x3": (ops.upsample2x_conv3x3, _upsample_then_conv, 2),
       "conv3x3_narrow": (ops.conv3x3_narrow, _conv, 1)}


def _fwd_bwd(fn, x, w, b, grad_out):
    def step():
        x.grad = w.grad = b.grad = None
        fn(x, w, b).backward(grad_out)
    return step


def bench(device: torch.device, batch: int, peak_gflops: Optional[float]) -> List[Dict[str, object]]:
    rows = []
    for name, op_name, c_in, c_out, hw in (CUDA_CASES if device.type == "cuda" else CPU_CASES):
        op, peer, up = OPS[op_name]
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(batch, c_in, hw, hw, device=device, generator=g).requires_grad_()
        w = (torch.randn(c_out, c_in, 3, 3, device=device, generator=g) / (9 * c_in) ** 0.5).requires_grad_()
        b = torch.randn(c_out, device=device, generator=g).requires_grad_()
        out_hw = hw * up
        grad_out = torch.randn(batch, c_out, out_hw, out_hw, device=device, generator=g)
        with torch.no_grad():  # check before timing: same function
            torch.testing.assert_close(op(x, w, b), peer(x, w, b), rtol=1e-3, atol=1e-3)
        t_peer = harness.time_fn(_fwd_bwd(peer, x, w, b, grad_out), device)
        t_zsq = harness.time_fn(_fwd_bwd(op, x, w, b, grad_out), device)
        # forward + input grad + weight grad of the full-resolution 3x3 convolution
        gflop = 3 * 2 * batch * out_hw * out_hw * c_out * c_in * 9 / 1e9
        rows.append(dict(harness.environment(device), bench="conv_forms", case=name, op=op_name, batch=batch,
                         c_in=c_in, c_out=c_out, input_hw=hw, peer_ms=t_peer * 1e3, zsq_ms=t_zsq * 1e3,
                         speedup=t_peer / t_zsq, peer_gflops=gflop / t_peer, zsq_gflops=gflop / t_zsq,
                         zsq_fraction_of_peak=(gflop / t_zsq / peak_gflops) if peak_gflops else None,
                         threads=torch.get_num_threads() if device.type == "cpu" else None))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64, help="images per call (default 64, as the QAT loop)")
    parser.add_argument("--peak-gflops", type=float, default=None,
                        help="the machine's fp32 peak, for the fraction-of-peak column")
    parser.add_argument("--quick", action="store_true", help="batch 8, nothing written")
    parser.add_argument("--no-write", action="store_true", help="print the table, append no rows")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    harness.set_cpu_threads_from_env()
    device = torch.device(args.device)
    rows = bench(device, 8 if args.quick else args.batch, args.peak_gflops)
    print(harness.markdown_table(rows, ["case", "batch", "peer_ms", "zsq_ms", "speedup", "peer_gflops",
                                        "zsq_gflops"]))
    if not args.no_write and not args.quick:
        print("rows appended to", harness.write_rows("conv_forms", rows))


if __name__ == "__main__":
    main()
