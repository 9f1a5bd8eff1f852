"""The ``zsq`` command line (also ``python -m zsq_engine.cli``). Run ``zsq <command> --help``.

Exit codes: 0 success, 1 a failure (missing or damaged file, unwritable folder, ...), 2 a wrong
command line, 130 interrupted. Every expected failure is one line on stderr
(``error: <what> (<file/argument>): <why>; <what to do>``, see :mod:`zsq_engine.commands.guard`);
``zsq --debug <command>`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

_MODULES = {"info": "info", "eval": "eval_cmd", "demo": "demo", "synthesize": "synthesize", "quantize": "quantize", "qat": "qat", "convert": "convert", "bench": "bench", "export": "export"}

_EPILOG = """Set ZSQ_BACKEND=reference|triton|cuda|cpu to force a kernel backend.
Every command checks its arguments, inputs and output location before the expensive part; an
existing output is replaced only with --overwrite (an input never). Presets default to 'fast'
(minutes on a 2-core CPU); '--preset paper' gives the published settings. `zsq info` lists the models.
exit codes: 0 done, 1 failed (bad or missing file, unwritable folder, ...), 2 wrong command line."""


def build_parser() -> argparse.ArgumentParser:
    from zsq_engine import __version__

    parser = argparse.ArgumentParser(
        prog="zsq", description="zsq_engine: zero-shot quantization of CNNs with fused kernels.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"zsq_engine {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for module in _MODULES.values():
        importlib.import_module(f"zsq_engine.commands.{module}").add_parser(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Optional[List[str]] = None) -> int:
    from zsq_engine.commands.guard import CommandError
    from zsq_engine.utils import FileFormatError

    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere before a "--", not only before the command name
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    argv = [a for i, a in enumerate(argv) if not (i < end and a == "--debug")]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = debug
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted (finished parts of a resumable run are kept; rerun the same command to continue)",
              file=sys.stderr)
        return 130
    except CommandError as exc:
        if args.debug:
            raise
        print(exc.line(), file=sys.stderr)
        return exc.exit_code
    except FileFormatError as exc:
        if args.debug:
            raise
        print(f"error: cannot use {exc.path}: {exc.why}" + (f"; {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError, ImportError, RuntimeError, MemoryError) as exc:
        # what the library raises for a bad input or a failed step: one line, not a traceback
        if args.debug:
            raise
        if isinstance(exc, (ValueError, FileNotFoundError)):
            print(f"error: {_one_line(exc)}", file=sys.stderr)
        else:
            print(f"error: {type(exc).__name__}: {_one_line(exc)}; rerun with `zsq --debug {args.command} ...` "
                  "for the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
