"""``zsq info``: versions, devices, backends and extension parts (and why any is missing), and the
registered models the other commands take as ``--model``."""
from __future__ import annotations

import argparse
import json
import platform
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("info", help="show versions, devices, available backends and the models",
                              description="Show versions, devices, which kernel backends and extension parts "
                                          "are available on this machine and why the others are not, and the "
                                          "registered models (the names --model takes).")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(run=run)


def collect() -> dict:
    import torch

    from zsq_engine import __version__, _ext, ops

    info = {
        "zsq_engine": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001 - report any reason
        info["triton"] = f"not importable ({exc.__class__.__name__})"
    info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    info["backends"] = {name: {"available": ok, "why": why}
                        for name, ok, why in ((n, *ops.backend_status(n)) for n in ops.BACKENDS)}
    info["extension"] = _ext.extension_status()
    module = _ext.get_extension()
    if module is not None:
        for fn in ("cpu_capabilities", "build_info"):
            if hasattr(module, fn):
                info[fn] = dict(getattr(module, fn)())
    from zsq_engine.models import get_model_info, list_models

    info["models"] = {name: {"input_shape": list(get_model_info(name).input_shape),
                             "num_classes": get_model_info(name).num_classes,
                             "weights": get_model_info(name).weights}
                      for name in list_models()}
    try:
        from zsq_engine.data import find_fashion_mnist_dir
        info["fashion_mnist"] = str(find_fashion_mnist_dir("test"))
    except Exception as exc:  # noqa: BLE001
        info["fashion_mnist"] = f"not found: {str(exc).splitlines()[0]}"
    return info


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=str)
        print()
        return 0
    for key in ("zsq_engine", "python", "platform", "torch", "torch_cuda", "triton", "cpu_threads"):
        print(f"{key:14s} {info[key]}")
    print(f"{'cuda devices':14s} {', '.join(info['cuda_devices']) or 'none'}")
    print(f"{'fashion-mnist':14s} {info['fashion_mnist']}")
    print("\nmodels (--model NAME):")
    for name, m in info["models"].items():
        shape = "x".join(str(v) for v in m["input_shape"])
        print(f"  {name:18s} input {shape:9s} {m['num_classes']:5d} classes  weights: {m['weights']}")
    print("\nbackends:")
    for name, b in info["backends"].items():
        print(f"  {name:10s} {'yes' if b['available'] else 'no ':3s}  {b['why']}")
    ext = info["extension"]
    print("\nextension zsq_engine._C:", "built" if ext.get("built") else f"not built ({ext.get('error')})")
    if ext.get("built"):
        print(f"  cpu kernels: {'yes' if ext.get('cpu') else 'no'}   cuda kernels: {'yes' if ext.get('cuda') else 'no'}")
    for fn in ("cpu_capabilities", "build_info"):
        if fn in info:
            print(f"  {fn}: " + ", ".join(f"{k}={v}" for k, v in info[fn].items()))
    return 0
