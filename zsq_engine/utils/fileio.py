"""Reading and writing the package's files safely: one neutral helper for every pipeline.

* :func:`load_torch_file`: ``torch.load(weights_only=True)`` that turns every way a file can be
  bad (missing, a folder, empty, text, garbage, truncated, pickled objects a weights-only load
  refuses) into :class:`FileFormatError` with one short reason -- never torch's advice to retry
  with ``weights_only=False``, which would run code from an untrusted file.
* :func:`save_torch_atomic` / :func:`write_text_atomic`: write a temporary file in the target
  folder, fsync, then ``os.replace``, so an interruption leaves the old file or the new one,
  never half of one; the final file gets the permissions of a normally created file (0666
  minus the umask), not ``mkstemp``'s 0600.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import torch

__all__ = ["FileFormatError", "load_torch_file", "save_torch_atomic", "write_text_atomic", "write_bytes_atomic",
           "save_figure_atomic", "default_file_mode"]


class FileFormatError(ValueError):
    """A file that exists but cannot be used: ``path``, ``why`` (one clause) and ``hint`` (what to do)."""

    def __init__(self, path, why: str, hint: str = "") -> None:
        self.path, self.why, self.hint = str(path), why, hint
        super().__init__(f"{path}: {why}" + (f"; {hint}" if hint else ""))


# Everything torch.load raises for a damaged or foreign file (zip reader, pickle reader, the
# weights-only unpickler, the legacy tar / pickle readers).
_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, KeyError, ValueError,
                IndexError, TypeError, AttributeError, UnicodeDecodeError, OverflowError, ImportError,
                AssertionError, struct.error)


def _why_unreadable(exc: BaseException) -> str:
    text = str(exc)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused:
        return (f"it holds a pickled Python object ({refused.group(1)}) that a weights-only load refuses; "
                "nothing from it was run")
    if isinstance(exc, EOFError):
        return "it ends too early (truncated)"
    if "zip archive" in text or isinstance(exc, zipfile.BadZipFile):
        return "it is damaged or truncated (its zip directory cannot be read)"
    return "it is not a file written by torch.save (unreadable content)"


def load_torch_file(path, what: str = "torch file", hint: str = ""):
    """``torch.load(path, map_location='cpu', weights_only=True)`` with one clear error per way it fails.

    ``what`` names the expected kind in messages ("synthesis output"), ``hint`` says what to
    do instead. Raises FileNotFoundError (missing) or :class:`FileFormatError` (anything else).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"{what} {path} does not exist", str(path))
    if path.is_dir():
        raise FileFormatError(path, f"is a folder, not a {what}", hint)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise FileFormatError(path, f"cannot be read ({exc.strerror or exc})", hint) from None
    if size == 0:
        raise FileFormatError(path, f"is empty (0 bytes), not a {what}", hint)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise FileFormatError(path, f"cannot be read ({exc.strerror})", "check its permissions") from None
    except (OSError, *_LOAD_ERRORS) as exc:
        # `from None`: the original text advises weights_only=False, unsafe for a file of unknown origin
        raise FileFormatError(path, f"is not a {what}: {_why_unreadable(exc)}", hint) from None


def default_file_mode() -> int:
    """0666 minus the process umask: the mode ``open(path, 'w')`` would give a new file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _write_atomic(path, write: Callable[[object], None], binary: bool) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_torch_atomic(obj, path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (the folder must exist)."""
    _write_atomic(path, lambda f: torch.save(obj, f), binary=True)


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (the folder must exist)."""
    _write_atomic(path, lambda f: f.write(text), binary=False)


def write_bytes_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (the folder must exist)."""
    _write_atomic(path, lambda f: f.write(data), binary=True)


def save_figure_atomic(fig, path, **savefig_kw) -> None:
    """``fig.savefig`` (PNG) into memory, then :func:`write_bytes_atomic`."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kw)
    write_bytes_atomic(path, buf.getvalue())
