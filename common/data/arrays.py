"""Arrays: ``.npz`` files, ``.npy`` pairs, directories and tar archives of ``.npy`` files.

A ``.npz`` holds ``x_<split>``/``y_<split>`` pairs (or ``x``/``y``, the split ``all``) and an
optional ``class_names`` array; a directory or a ``.tar``/``.tar.gz``/``.tgz``/``.tar.xz``/
``.tar.bz2`` holds ``x_<split>.npy``/``y_<split>.npy`` files; one ``.npy`` of images finds its
labels beside it: ``x.npy``/``x_<split>.npy`` take ``y.npy``/``y_<split>.npy`` (``x_test.npy`` ->
``y_test.npy``, split ``test``), any other name adds ``_labels`` (``digits.npy`` ->
``digits_labels.npy``, split ``all``). Images are ``[N, H, W]`` (given a channel axis) or
``[N, H, W, 1|3]`` uint8; labels ``[N]`` integers. Class names are ``"0"`` .. ``"K-1"`` unless a
class list says otherwise: ``classes.txt`` (one name a line) or ``classes.json`` (a list) inside a
directory or tar, or beside the file as ``<stem>.classes.txt``/``.json`` or
``classes.txt``/``.json``. A tar archive is read in one sequential pass (compressed tars seek
slowly) and cached; the other forms are read directly.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from common.data.cache import Meta, Part
from common.data.folders import hidden, text_lines
from common.data.imaging import transform_array
from common.data.spec import SINGLE_SPLIT, Size, stem
from common.errors import invalid

__all__ = ["ArraySource", "array_split", "check_arrays", "class_file", "parse_class_list"]

logger = logging.getLogger(__name__)


class ArraySource:
    """``x_<split>``/``y_<split>`` arrays from a .npz, a .npy pair, a directory or a tar."""

    def __init__(self, spec: str, path: Path) -> None:
        self.spec = spec
        self.path = path
        self.cacheable = False
        self._npz: Any = None
        self._pairs: dict[str, tuple[Any, Any]] = {}  # split -> (x, y): keys, paths or arrays
        self._class_list: list[str] | None = None
        self._meta: Meta | None = None
        lower = path.name.lower()
        if path.is_dir():
            for file in sorted(path.iterdir()):
                split = array_split(file.name, "x")
                if split is not None:
                    self._pairs[split] = (file, file.with_name("y" + file.name[1:]))
            self._class_list = class_file(path / "classes.txt", path / "classes.json", spec)
        elif lower.endswith(".npz"):
            self._open_npz()
        elif lower.endswith(".npy"):
            split = array_split(path.name, "x")
            if split is not None:
                self._pairs[split] = (path, path.with_name("y" + path.name[1:]))
            else:
                self._pairs[SINGLE_SPLIT] = (path, path.with_name(path.stem + "_labels.npy"))
        else:
            self.cacheable = True
            self._read_tar()
        if self._class_list is None and not path.is_dir():
            base = stem(path)
            self._class_list = class_file(
                path.with_name(base + ".classes.txt"), path.with_name(base + ".classes.json"), spec
            ) or class_file(path.with_name("classes.txt"), path.with_name("classes.json"), spec)
        for x, y in self._pairs.values():
            if isinstance(y, Path) and not y.is_file():
                raise invalid("spec", spec, f"a labels file {y.name} beside {x.name} (not found)")
        if not self._pairs:
            raise invalid("spec", spec, "arrays named x_<split>/y_<split> (or x/y) (found none)")

    def _open_npz(self) -> None:
        try:
            self._npz = np.load(self.path, allow_pickle=False)
            keys = list(self._npz.files)
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise invalid("spec", self.spec, f"a readable .npz file ({err})") from err
        for key in keys:
            split = array_split(key + ".npy", "x")
            if split is None:
                continue
            y_key = "y" + key[1:]
            if y_key not in keys:
                raise invalid("spec", self.spec, f"a {y_key!r} array beside {key!r} in the .npz")
            self._pairs[split] = (key, y_key)
        if "class_names" in keys:
            self._class_list = [str(n) for n in self._load("class_names").tolist()]

    def _read_tar(self) -> None:
        """Every array of the archive in one sequential pass (compressed tars seek slowly)."""
        arrays: dict[str, np.ndarray] = {}
        try:
            with tarfile.open(self.path, "r:*") as tar:
                for member in tar:
                    base = PurePosixPath(member.name).name
                    if not member.isfile() or hidden(member.name):
                        continue
                    if base.lower() in ("classes.txt", "classes.json"):
                        data = tar.extractfile(member).read()  # type: ignore[union-attr]
                        self._class_list = parse_class_list(data, base, self.spec)
                    elif array_split(base, "x") or array_split(base, "y"):
                        data = tar.extractfile(member).read()  # type: ignore[union-attr]
                        arrays[base.lower()] = self._load(io.BytesIO(data), member.name)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise invalid("spec", self.spec, f"a readable tar archive ({err})") from err
        for name, x in arrays.items():
            split = array_split(name, "x")
            if split is not None:
                y = arrays.get("y" + name[1:])
                if y is None:
                    raise invalid("spec", self.spec, f"a y{name[1:]} member beside {name}")
                self._pairs[split] = (x, y)

    def _load(self, handle: Any, name: str | None = None) -> np.ndarray:
        if isinstance(handle, np.ndarray):
            return handle
        try:
            if self._npz is not None:
                return np.asarray(self._npz[handle])
            return np.load(handle, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            where = name or getattr(handle, "name", handle)
            raise invalid("spec", self.spec, f"readable arrays ({where}: {err})") from err

    def splits(self) -> tuple[str, ...]:
        return tuple(self._pairs)

    def build(self, split: str, size: Size | None, channels: int | None) -> dict[str, Part]:
        wanted = self._pairs if self.cacheable else {split: self._pairs[split]}
        raw = {name: (self._load(x), self._load(y)) for name, (x, y) in wanted.items()}
        labels = [y for _, y in raw.values()]
        labels += [self._load(y) for name, (_, y) in self._pairs.items() if name not in raw]
        meta = self._make_meta(labels)
        parts = {}
        for name, (x, y) in raw.items():
            images, y = check_arrays(x, y, self.spec, name, len(meta.class_names))
            parts[name] = Part(transform_array(images, size, channels, self.spec), y)
        self._meta = meta
        return parts

    def _make_meta(self, all_labels: list[np.ndarray]) -> Meta:
        if self._class_list is not None:
            return Meta(tuple(self._class_list))
        highest = max((int(np.max(y)) for y in all_labels if np.size(y)), default=-1)
        return Meta(tuple(str(i) for i in range(highest + 1)))

    @property
    def meta(self) -> Meta:
        assert self._meta is not None, "build() sets the class names"
        return self._meta

    def close(self) -> None:
        if self._npz is not None:
            self._npz.close()


def array_split(name: str, letter: str) -> str | None:
    """``x_train.npy`` -> ``train``, ``x.npy`` -> ``all``, anything else None."""
    match = re.fullmatch(rf"{letter}(?:_(.+))?\.npy", name, flags=re.IGNORECASE)
    if not match:
        return None
    return match.group(1) or SINGLE_SPLIT


def class_file(txt: Path, js: Path, spec: str) -> list[str] | None:
    """Class names from the first of `txt` (one a line) and `js` (a JSON list) that exists."""
    for path in (txt, js):
        if path.is_file():
            logger.info("class names of %s from %s", spec, path)
            return parse_class_list(path.read_bytes(), path.name, spec)
    return None


def parse_class_list(data: bytes, name: str, spec: str) -> list[str]:
    """Class names from a ``.json`` list (or ``{"0": name}`` object) or a text file."""
    if name.lower().endswith(".json"):
        try:
            names = json.loads(data)
        except ValueError as err:
            raise invalid("spec", spec, f"a JSON list of class names in {name} ({err})") from err
        if isinstance(names, dict):
            try:
                names = [names[k] for k in sorted(names, key=int)]
            except ValueError as err:
                raise invalid("spec", spec, f"integer keys in {name}") from err
        if not isinstance(names, list):
            raise invalid("spec", spec, f"a JSON list of class names in {name}")
        return [str(n) for n in names]
    return text_lines(data, spec, name)


def check_arrays(
    x: np.ndarray, y: np.ndarray, spec: str, split: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 ``[N, H, W, C]`` and labels as int64 ``[N]``, or a `UsageError`."""
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise invalid("spec", spec, f"x_{split} of shape [N, H, W] or [N, H, W, 1|3] "
                                    f"(got {x.shape})")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.integer) or (x.size and (x.min() < 0 or x.max() > 255)):
            raise invalid("spec", spec, f"x_{split} of uint8 pixels 0..255 (got {x.dtype})")
        x = x.astype(np.uint8)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise invalid("spec", spec, f"y_{split} of integer labels [N] (got {y.dtype} {y.shape})")
    if len(x) != len(y):
        raise invalid("spec", spec, f"as many labels as images in split {split!r} "
                                    f"(got {len(x)} images, {len(y)} labels)")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise invalid("spec", spec, f"y_{split} in 0..{num_classes - 1} "
                                    f"(got {y.min()}..{y.max()})")
    return x, y.astype(np.int64)
