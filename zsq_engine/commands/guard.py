"""One policy for every ``zsq`` command: check all arguments, inputs and the output location
before any expensive work, never lose work, and report each expected failure in one line.

* :class:`UsageError` (exit 2): the command line itself must change -- a value out of range,
  flags that conflict or would be ignored, an unknown name, an output that already exists
  (without ``--overwrite``) or that is one of the command's own inputs (even with it).
* :class:`CommandError` (exit 1): the command line is fine but something failed -- a missing,
  unreadable or damaged file, a folder that cannot be written, data that is not there.

Both print as ``error: <what> (<file/argument>): <why>; <what to do>``; ``zsq --debug`` shows
the traceback instead. Outputs are written atomically (:mod:`zsq_engine.utils.fileio`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

__all__ = ["CommandError", "UsageError", "bad_value", "check_positive", "check_bits", "check_model",
           "output_file", "output_folder", "input_file", "load_input", "make_parent", "writing",
           "check_backend_env", "from_library_error"]


class CommandError(Exception):
    """An expected failure of a command: one line on stderr, exit code 1."""

    exit_code = 1

    def __init__(self, what: str, where: Optional[str], why: str, todo: str = "") -> None:
        self.what, self.where, self.why, self.todo = what, where, why, todo
        super().__init__(self.text())

    def text(self) -> str:
        where = f" ({self.where})" if self.where not in (None, "") else ""
        todo = f"; {self.todo}" if self.todo else ""
        return f"{self.what}{where}: {self.why}{todo}"

    def line(self) -> str:
        return "error: " + " ".join(self.text().split())  # always one line


class UsageError(CommandError):
    """The command line is wrong: exit code 2."""

    exit_code = 2


def bad_value(arg: str, value, why: str, todo: str = "") -> UsageError:
    return UsageError(f"invalid {arg}", str(value), why, todo)


def check_positive(args, *names: str, minimum: int = 1) -> None:
    """Each ``args.<name>`` that is set must be an int >= ``minimum``."""
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < minimum:
            flag = "--" + name.replace("_", "-")
            raise bad_value(flag, v, f"must be >= {minimum}", f"pass {flag} {minimum} or more")


def check_bits(value: int, arg: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 8:
        raise bad_value(arg, value, "bit-widths must be integers in 2..8", f"e.g. {arg} 4")


def check_model(name: str, arg: str = "--model") -> None:
    """A registered model name, or a ``package.module:factory`` spec whose factory can be imported."""
    from zsq_engine.models import list_models
    from zsq_engine.models.user import import_factory, is_user_spec

    if is_user_spec(name):
        try:
            import_factory(name)
        except ValueError as exc:
            raise UsageError("unusable model spec", f"{arg} {name}", str(exc).split(": ", 1)[-1],
                             "pass package.module:factory of an importable callable, or a name from `zsq info`") from None
        return
    if name not in list_models():
        raise UsageError("unknown model", f"{arg} {name}", f"valid models: {', '.join(list_models())}",
                         "`zsq info` lists them with their input shapes")


# ---------------------------------------------------------------------- paths

def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_folder_usable(folder: Path, arg: str, target: Path) -> None:
    """``folder`` exists and is writable, or can be created: its nearest existing ancestor is a
    writable folder (nothing is created here)."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise CommandError(f"cannot create the output folder for {arg}", str(target),
                           f"{base} is a file, not a folder", "choose another location")
    if not os.access(base, os.W_OK | os.X_OK):
        kind = "output folder" if base == folder.absolute() else "folder"
        raise CommandError(f"cannot write {arg}", str(target), f"the {kind} {base} is not writable",
                           "choose another location or fix its permissions")


def output_file(path, arg: str = "--out", overwrite: bool = False,
                inputs: Iterable[Optional[str]] = ()) -> Path:
    """Check an output file before any work: not a folder, not one of ``inputs``, not existing
    unless ``overwrite``, its folder writable or creatable. Returns it as a Path."""
    if path is None or str(path).strip() == "":
        raise bad_value(arg, repr(path), "needs a file name", f"e.g. {arg} out.pt")
    out = Path(path)
    for given in inputs:
        if given and given != "real" and _same_file(out, Path(given)):
            raise UsageError(f"{arg} names an input of this command", str(out),
                             "it would be overwritten by the result (refused even with --overwrite)",
                             "write the result to another file")
    if out.is_dir():
        raise UsageError(f"{arg} is a folder", str(out), "a file name is expected",
                         f"e.g. {arg} {out / 'result.pt'}")
    if out.exists() and not overwrite:
        raise UsageError(f"{arg} already exists", str(out), "refusing to replace it",
                         "pass --overwrite to replace it, or choose another file")
    _check_folder_usable(out.parent, arg, out)
    return out


def output_folder(path, names: Sequence[str], arg: str = "--out", overwrite: bool = False) -> Path:
    """Check an output folder that will receive ``names``: not a file, none of ``names`` there
    unless ``overwrite``, writable or creatable. Returns it as a Path."""
    if path is None or str(path).strip() == "":
        raise bad_value(arg, repr(path), "needs a folder name", f"e.g. {arg} runs/x")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{arg} is a file", str(out), "a folder is expected", "choose a folder name")
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise UsageError(f"{arg} holds an earlier run", str(out), f"{', '.join(existing)} would be replaced",
                         "pass --overwrite to replace them, or choose another folder")
    for n in names:
        if (out / n).is_dir():
            raise UsageError(f"{arg} holds a folder named {n}", str(out / n), "the result file cannot replace it",
                             "choose another folder")
    _check_folder_usable(out, arg, out)
    return out


def make_parent(path: Path, arg: str = "--out") -> None:
    """Create ``path``'s folder when the results are ready to be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create the output folder for {arg}", str(path.parent),
                           exc.strerror or str(exc), "choose another location") from None


class writing:
    """``with writing(path, arg): ...`` turns an OSError while writing (disk full, permissions
    changed mid-run) into one line; the atomic writers leave no partial file behind."""

    def __init__(self, path, arg: str = "--out") -> None:
        self.path, self.arg = Path(path), arg

    def __enter__(self) -> Path:
        make_parent(self.path, self.arg)
        return self.path

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, OSError):
            raise CommandError(f"cannot write {self.arg}", str(self.path), exc.strerror or str(exc),
                               "free some space or choose another location") from None
        return False


def input_file(path, arg: str) -> Path:
    """An input file named on the command line must exist and be a file (checked before any work)."""
    p = Path(path)
    if not p.exists():
        raise CommandError(f"cannot read {arg}", str(p), "the file does not exist", "check the path")
    if p.is_dir():
        raise CommandError(f"cannot read {arg}", str(p), "it is a folder, not a file", "pass the file itself")
    return p


def image_folders(*flags_and_paths) -> None:
    """Each given ``(flag, path)`` ImageFolder argument must name an existing folder."""
    for flag, folder in flags_and_paths:
        if folder is not None and not Path(folder).is_dir():
            raise CommandError(f"cannot read {flag}", str(folder), "it is not a folder",
                               "pass an ImageFolder (root/<class>/<image>)")


def load_input(path, arg: str, loader: Callable, *a, **kw):
    """``loader(path, ...)`` with its expected failures (missing file, unreadable or foreign
    content, see :mod:`zsq_engine.utils.fileio`) reported against ``arg``."""
    try:
        return loader(path, *a, **kw)
    except CommandError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped below, or re-raised
        raise from_library_error(exc, arg, str(path)) from None


def from_library_error(exc: BaseException, arg: str, path: str) -> BaseException:
    """The one-line form of a library error about the file ``path`` given as ``arg``."""
    from zsq_engine.utils import FileFormatError

    if isinstance(exc, FileFormatError):
        return CommandError(f"cannot use {arg}", exc.path, exc.why, exc.hint or "pass another file")
    if isinstance(exc, FileNotFoundError):
        return CommandError(f"cannot read {arg}", path, "the file does not exist", "check the path")
    if isinstance(exc, (PermissionError, IsADirectoryError)):
        return CommandError(f"cannot read {arg}", path, exc.strerror or str(exc), "check the path and permissions")
    if isinstance(exc, ValueError):
        return CommandError(f"cannot use {arg}", path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                            "pass another file")
    return exc


# ---------------------------------------------------------------------- environment

def check_backend_env(device) -> None:
    """A kernel backend forced with ZSQ_BACKEND must be able to run on ``device``."""
    from zsq_engine import ops
    from zsq_engine.ops import dispatch

    var = dispatch.ENV_VAR
    raw = os.environ.get(var, "").strip()
    if not raw:
        return
    if raw.lower() not in ops.BACKENDS:
        raise UsageError(f"invalid environment variable {var}", raw,
                         f"not a backend (expected one of {', '.join(ops.BACKENDS)})", f"unset {var}")
    try:  # the dispatcher's own rules: available here, and able to take tensors on ``device``
        dispatch.select("int_mm", device)
    except dispatch.BackendUnavailableError as exc:
        raise UsageError(f"{var}={raw} cannot run here", f"--device {device}", str(exc),
                         f"unset {var} or choose one of: {', '.join(ops.available_backends())}") from None
