"""Crash-safe file writes, and the check that an output can be written before work is paid.

Atomic writes: a reader sees the old file or the new one, never half of one. The journal,
configs, model cards and `models.config` are all written this way: the text goes to a temporary
file in the same folder (so `os.replace` is an atomic rename on the same file system), flushed
and fsynced, then renamed over the target. Keras' `BackupAndRestore` and TF Serving's own
file-system source rely on the same rename semantics.

`check_writable` is what every command runs on each path it will write, before any training,
query or download: it creates and removes a probe file in the nearest folder that exists (a
permission bit, a read-only mount, a full disk or a path through a regular file all fail there,
whoever the user is: ``os.access`` says yes to root on a read-only mount) and raises a
`UsageError` naming the argument. `write_error` turns an `OSError` met later into the same
kind of one-line error.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal

from common.errors import UsageError, invalid

__all__ = ["check_writable", "write_atomic", "write_error", "write_json_atomic",
           "write_text_atomic"]


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO], object], *,
                 mode: Literal["w", "wb"] = "wb") -> Path:
    """Replace `path` with what ``write(handle)`` writes, atomically (a synced temp file in the
    same folder, then renamed over `path`); the parent folder must exist."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # readable by a serving container running as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Replace `path` with `text` atomically; the parent folder must exist."""
    return write_atomic(path, lambda handle: handle.write(text), mode="w")


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, sort_keys: bool = False) -> Path:
    """`write_text_atomic` of `data` as indented JSON with a final newline."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def _nearest_existing(path: Path) -> Path:
    """`path` itself when it exists, else its closest ancestor that does."""
    current = path
    while not os.path.lexists(current):
        if current.parent == current:  # pragma: no cover - the root always exists
            break
        current = current.parent
    return current


def _reason(err: OSError) -> str:
    if err.errno == errno.EROFS:
        return "a read-only file system"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return err.strerror or type(err).__name__


def check_writable(path: str | os.PathLike[str], argument: str, *,
                   kind: Literal["dir", "file"] = "dir") -> Path:
    """Raise `UsageError` for `argument` unless `path` can be created or written; return it.

    `kind` "dir": a folder that exists or can be created (with its parents); "file": a file
    written atomically beside its siblings (its folder must take new files). Nothing is left
    behind: the probe file is removed, and no missing folder is created.
    """
    target = Path(path).expanduser()
    where = target if kind == "dir" else target.parent
    existing = _nearest_existing(where)
    if existing.exists() and not existing.is_dir():
        raise invalid(argument, str(path),
                      f"a writable {'folder' if kind == 'dir' else 'file path'} "
                      f"({existing} is a file, not a folder)")
    if kind == "file" and target.is_dir():
        raise invalid(argument, str(path), f"a file path ({target} is a folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
    except OSError as err:
        raise invalid(argument, str(path),
                      f"a writable location ({existing} cannot be written: {_reason(err)})"
                      ) from None
    os.close(fd)
    os.unlink(probe)
    if kind == "file" and target.exists():
        try:
            with open(target, "ab"):
                pass
        except OSError as err:
            raise invalid(argument, str(path),
                          f"a writable file ({target} cannot be written: {_reason(err)})"
                          ) from None
    return target


def write_error(err: OSError, argument: str, path: str | os.PathLike[str]) -> UsageError:
    """An `OSError` met while writing `path` as the one-line `UsageError` naming `argument`."""
    return invalid(argument, str(path),
                   f"a writable location ({err.filename or path}: {_reason(err)})")
