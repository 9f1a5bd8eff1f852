"""The ``zsq`` command line (also ``python -m zsq_engine.cli``). Run ``zsq <command> --help``."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

_MODULES = {"info": "info", "eval": "eval_cmd", "demo": "demo", "synthesize": "synthesize", "quantize": "quantize", "qat": "qat", "convert": "convert", "bench": "bench", "export": "export"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsq", description="zsq_engine: zero-shot quantization of CNNs with fused kernels.",
        epilog="Set ZSQ_BACKEND=reference|triton|cuda|cpu to force a kernel backend.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for module in _MODULES.values():
        importlib.import_module(f"zsq_engine.commands.{module}").add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, ImportError) as exc:
        # user-facing problems (missing data, bad argument values) get one clear line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
