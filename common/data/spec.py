"""What a dataset *spec* names, and the checks of `load_dataset`'s other arguments.

A spec is a path (an image folder or zip, a Tiny-ImageNet folder, `.npz`/`.npy`/tar arrays) or a
tensorflow-datasets name (``tfds:NAME`` or a bare registered name when no such path exists);
`resolve_spec` tells them apart before anything is read. The checks run before any file is read,
downloaded or cached, and raise the toolkit's one-line `UsageError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common.constraints import check_choice, check_int, is_int
from common.errors import invalid

__all__ = [
    "FILE_SUFFIXES",
    "IMAGE_SUFFIXES",
    "LOCAL_COPY_HINT",
    "SINGLE_SPLIT",
    "SPLIT_FOLDER_NAMES",
    "Size",
    "TAR_SUFFIXES",
    "check_load_arguments",
    "parse_split",
    "quoted",
    "read_class_list",
    "resolve_spec",
    "stem",
]

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm"}
)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
FILE_SUFFIXES = (".zip", ".npz", ".npy") + TAR_SUFFIXES
SPLIT_FOLDER_NAMES = frozenset(
    {"train", "test", "val", "valid", "validation", "dev", "extra", "unlabeled", "holdout"}
)
SINGLE_SPLIT = "all"
"""The one split of a folder or array file without split folders or split names."""
LOCAL_COPY_HINT = (
    "pass a local copy instead: an image folder or zip (class per sub-folder), "
    "a Tiny-ImageNet folder/zip, or .npz/.npy arrays"
)

Size = tuple[int, int]


def check_load_arguments(
    image_size: int | tuple[int, int] | None, channels: int | None, limit: int | None, seed: int
) -> tuple[Size | None, int | None]:
    """Check `load_dataset`'s transform arguments; return ``(H, W)`` (or None) and channels."""
    size = check_image_size(image_size)
    if channels is not None and is_int(channels):
        channels = int(channels)  # numpy integers too
    check_choice("channels", channels, (1, 3), optional=True)
    check_int("limit", limit, min=1, optional=True)
    check_int("seed", seed)
    return size, channels


def check_image_size(image_size: int | tuple[int, int] | None) -> Size | None:
    """``S`` or ``(H, W)`` of positive integers as ``(H, W)``; None stays None."""
    if image_size is None:
        return None
    expected = "a positive integer, (height, width) or None"
    if is_int(image_size):
        pair: tuple[Any, ...] = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        pair = tuple(image_size)
    else:
        raise invalid("image_size", image_size, expected)
    if not all(is_int(v) and v > 0 for v in pair):
        raise invalid("image_size", image_size, expected)
    return int(pair[0]), int(pair[1])


def parse_split(split: str) -> list[str]:
    """``"train+val"`` -> ``["train", "val"]``: split names, each at most once."""
    if not isinstance(split, str) or not split.strip():
        raise invalid("split", split, "a split name such as 'train', or several joined by '+'")
    parts = [part.strip() for part in split.split("+")]
    if not all(parts):
        raise invalid("split", split, "split names joined by '+' with none empty")
    repeated = sorted({part for part in parts if parts.count(part) > 1})
    if repeated:
        raise invalid("split", split, f"each split at most once ({repeated[0]!r} is repeated)")
    return parts


def read_class_list(exclude: str | os.PathLike[str] | Iterable[str]) -> list[str]:
    """Class names from a file (one a line, ``#`` comments) or an iterable of names."""
    if isinstance(exclude, (str, os.PathLike)):
        path = Path(exclude).expanduser()
        if not path.is_file():
            raise invalid(
                "exclude_classes", str(exclude),
                "an existing file with one class name per line, or a list of names",
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise invalid("exclude_classes", str(exclude), f"a readable text file ({err})") from err
        return [
            line.split("#", 1)[0].strip() for line in text.splitlines()
            if line.split("#", 1)[0].strip()
        ]
    names = [str(name).strip() for name in exclude]
    return [name for name in names if name]


def resolve_spec(spec: str) -> tuple[str, str]:
    """``("tfds", name)`` or ``("path", path)``; a missing path that is no tfds name fails."""
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise invalid("spec", spec, "a dataset path or a tensorflow-datasets name")
    text = str(spec).strip()
    if text.startswith("tfds:"):
        name = text[len("tfds:"):].strip()
        if not name:
            raise invalid("spec", text, "a dataset name after 'tfds:'")
        return "tfds", name
    path = Path(text).expanduser()
    if path.exists():
        return "path", str(path)
    if text.lower().endswith(FILE_SUFFIXES) or text.startswith((".", "~", os.sep)):
        raise invalid("spec", text, "an existing file or folder (no such path)")
    if not re.fullmatch(r"[a-z][a-z0-9_]*(/[\w.\-]+)?(:[\w.*]+)?", text):
        raise invalid(
            "spec", text, "an existing path, or a tensorflow-datasets name such as 'cifar10'"
        )
    return "tfds", text


def quoted(names: Iterable[str]) -> str:
    """``'a', 'b'``: names for a message."""
    return ", ".join(repr(n) for n in names)


def stem(path: Path) -> str:
    """The file name without its dataset suffix (``x.tar.gz`` -> ``x``)."""
    lower = path.name.lower()
    for suffix in sorted(FILE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem
