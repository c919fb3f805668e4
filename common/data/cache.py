"""The on-disk cache of decoded splits: ``$MEXT_CACHE_DIR`` (default ``~/.cache/mext``).

Decoding an image folder, a zip, a Tiny-ImageNet set or a tar archive, resizing arrays and
reading a prepared tensorflow-datasets split is done once per source, split, `image_size` and
`channels`: the result is an ``.npz`` keyed by the source's absolute path and a fingerprint (the
size and modification time of the file and of the companions that change what it loads, or of
every file of a folder; for tensorflow-datasets its data folder, name and version). Files are
written atomically (a temporary file and `os.replace`); a damaged or inconsistent one is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.data.spec import Size, stem

__all__ = ["Meta", "Part", "cache_dir", "cache_key", "fingerprint", "read", "write"]

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 1


@dataclass
class Part:
    """One decoded split: uint8 images ``[N, H, W, C]`` and int64 labels ``[N]``."""

    images: np.ndarray
    labels: np.ndarray


@dataclass
class Meta:
    """What every split of a source shares: its class names (and descriptions)."""

    class_names: tuple[str, ...]
    descriptions: tuple[str, ...] | None = None


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$MEXT_CACHE_DIR`` or ``~/.cache/mext``."""
    configured = os.environ.get("MEXT_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "mext"


def fingerprint(path: Path) -> dict[str, Any]:
    """What changes when the source at `path` changes: sizes and modification times."""
    if path.is_dir():
        digest = hashlib.sha256()
        for folder, subfolders, files in os.walk(path):
            subfolders.sort()
            for name in sorted(files):
                stat = os.stat(os.path.join(folder, name))
                digest.update(f"{folder}/{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return {"tree": digest.hexdigest()}
    stat = path.stat()
    found = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    name = stem(path)
    companions = [  # files beside it that change what it loads: labels, class lists
        path.with_name("y" + path.name[1:]), path.with_name(path.stem + "_labels.npy"),
        path.with_name(name + ".classes.txt"), path.with_name(name + ".classes.json"),
        path.with_name("classes.txt"), path.with_name("classes.json"),
    ]
    for companion in companions:
        if companion != path and companion.is_file():
            info = companion.stat()
            found[companion.name] = f"{info.st_size}:{info.st_mtime_ns}"
    return found


def cache_key(
    path: Path, fingerprint: dict[str, Any], split: str, size: Size | None, channels: int | None
) -> Path:
    """The cache file of one split of the source at `path` at this size and channels."""
    key = json.dumps(
        {
            "format": _CACHE_FORMAT, "path": str(path), **fingerprint, "split": split,
            "image_size": size, "channels": channels,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem(path)}-{split}")[:80]
    return cache_dir() / f"{safe}-{digest}.npz"


def read(path: Path) -> tuple[Part, Meta] | None:
    """The cached split at `path`, or None when there is none or it is damaged."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
            names = tuple(str(n) for n in data["class_names"].tolist())
            descriptions = (
                tuple(str(d) for d in data["class_descriptions"].tolist())
                if "class_descriptions" in data.files else None
            )
        if (
            images.dtype != np.uint8 or images.ndim != 4 or labels.shape != images.shape[:1]
            or (len(labels) and labels.max() >= len(names))
        ):
            raise ValueError("inconsistent arrays")
    except Exception as err:  # any damage means: decode again and overwrite
        logger.warning("ignoring unreadable cache file %s (%s); rebuilding it", path, err)
        return None
    logger.info("cache hit %s", path)
    return Part(images, labels.astype(np.int64)), Meta(names, descriptions)


def write(path: Path, part: Part, meta: Meta) -> None:
    """Store one split atomically; a disk that refuses only costs the cache (a warning)."""
    arrays: dict[str, np.ndarray] = {
        "images": part.images, "labels": part.labels,
        "class_names": np.array(meta.class_names, dtype=str),
    }
    if meta.descriptions is not None:
        arrays["class_descriptions"] = np.array(meta.descriptions, dtype=str)
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=path.stem, suffix=".tmp", delete=False
        ) as handle:
            temp = handle.name
            np.savez(handle, **arrays)
        os.replace(temp, path)
        temp = None
        logger.info("cached %s", path)
    except OSError as err:
        logger.warning("could not write cache file %s (%s); continuing without it", path, err)
    finally:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)
