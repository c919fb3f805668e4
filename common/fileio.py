"""Crash-safe file writes: a reader sees the old file or the new one, never half of one.

The journal, configs, model cards and `models.config` are all written this way: the text goes to
a temporary file in the same folder (so `os.replace` is an atomic rename on the same file
system), flushed and fsynced, then renamed over the target. Keras' `BackupAndRestore` and TF
Serving's own file-system source rely on the same rename semantics.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["write_json_atomic", "write_text_atomic"]


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Replace `path` with `text` atomically; the parent folder must exist."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # readable by a serving container running as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, sort_keys: bool = False) -> Path:
    """`write_text_atomic` of `data` as indented JSON with a final newline."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")
