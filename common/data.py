"""The data loader layer: one function, `load_dataset`, turns a dataset *spec* into uint8 images.

Victim training, the attacks' transfer sets (Knockoff Nets' natural-image set P_A, Orekondy et al.
2019) and the OOD query detector (Atli et al. 2020) all read their images through it, so every
package sees the same pixels, labels and class order. A spec is one of:

1. **tensorflow-datasets**: ``tfds:NAME`` (``tfds:cifar10``, ``tfds:mnist:3.0.1``) or a bare
   registered name (``cifar10``) when no file or folder of that name exists. Data already prepared
   in `data_dir` (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``) is read as is. Otherwise
   it is downloaded with tfds' own ``download_and_prepare`` if this machine is online, decided by
   ``MEXT_OFFLINE`` (``1``: never download, ``0``: always try) or, when that is unset, by a
   3-second TCP probe of ``storage.googleapis.com:443``. Offline, nothing is written and a
   `UsageError` says which local copy to pass instead.
2. **Image folder**, a directory or a ``.zip``: ``[<split>/]<class>/<image>``. With split folders
   (``train/``, ``test/``, ...) `split` picks one; without, the whole folder is the split ``all``
   (``train`` is accepted too). Classes are the sorted class-folder names of all splits together.
   One top folder that is not itself a split or class folder (``cifar10/train/cat/1.png``) is
   skipped.
3. **Tiny-ImageNet layout**, a directory or ``.zip``, recognised by ``wnids.txt`` beside
   ``train/<wnid>/images/`` (possibly inside a top folder such as ``tiny-imagenet-200/``).
   Splits ``train`` and ``val`` (``val/images/`` labelled by column 2 of
   ``val/val_annotations.txt``, or ``val/<wnid>/images/``). Classes are the wnids in
   ``wnids.txt`` order; ``words.txt`` fills `ImageDataset.class_descriptions`.
4. **Arrays**: a ``.npz`` with ``x_<split>``/``y_<split>`` pairs (or ``x``/``y``, the split
   ``all``) and an optional ``class_names`` array; a directory or a ``.tar``/``.tar.gz``/``.tgz``/
   ``.tar.xz``/``.tar.bz2`` of ``x_<split>.npy``/``y_<split>.npy`` files; or one ``.npy`` of
   images whose labels sit beside it: ``x.npy``/``x_<split>.npy`` take ``y.npy``/``y_<split>.npy``
   (``x_test.npy`` -> ``y_test.npy``, split ``test``), any other name adds ``_labels``
   (``digits.npy`` -> ``digits_labels.npy``, split ``all``). Images are ``[N, H, W]`` (given a
   channel axis) or ``[N, H, W, 1|3]`` uint8; labels ``[N]`` integers. Class names are
   ``"0"`` .. ``"K-1"`` unless a class list says otherwise: ``classes.txt`` (one name a line) or
   ``classes.json`` (a list) inside a directory or tar, or beside the file as
   ``<stem>.classes.txt``/``.json`` or ``classes.txt``/``.json``.

`split` may join several splits with ``+`` (``train+val``), concatenated in that order. Then
`image_size` resizes (Pillow's antialiased bilinear filter), `channels` converts (1: ITU-R 601
luma, 3: grey copied to RGB), `exclude_classes` drops classes (their images and their names;
labels are re-indexed) and `limit` keeps a seeded, class-stratified random subset.

Decoded image folders, zips, Tiny-ImageNet sets, tar archives, resized arrays and prepared
tensorflow-datasets splits are cached under ``$MEXT_CACHE_DIR`` (default ``~/.cache/mext``) as
``.npz`` files keyed by the source's absolute path, size and modification time (for
tensorflow-datasets: its data folder, name and version), the split, `image_size` and
`channels`; they are
written atomically, and an unreadable cache file is rebuilt (``cache=False`` skips the cache).
Images are decoded by Pillow on a thread pool fed in order by the thread reading the archive.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import socket
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from common.errors import UsageError, invalid

__all__ = [
    "ImageDataset",
    "cache_dir",
    "can_download",
    "load_dataset",
    "split_names",
]

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 1
_IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm"}
)
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
_FILE_SUFFIXES = (".zip", ".npz", ".npy") + _TAR_SUFFIXES
_SPLIT_FOLDER_NAMES = frozenset(
    {"train", "test", "val", "valid", "validation", "dev", "extra", "unlabeled", "holdout"}
)
_SINGLE_SPLIT = "all"
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
_CHUNK = 256
_PROBE_ADDRESS = ("storage.googleapis.com", 443)
_LOCAL_COPY_HINT = (
    "pass a local copy instead: an image folder or zip (class per sub-folder), "
    "a Tiny-ImageNet folder/zip, or .npz/.npy arrays"
)

Size = tuple[int, int]


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images with integer labels, as every package consumes them.

    `images` is uint8 ``[N, H, W, C]``; `labels` int64 ``[N]`` indexes `class_names`;
    `source` names the spec and split; `class_descriptions` (Tiny-ImageNet's ``words.txt``)
    is aligned with `class_names` when the source has them.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str
    class_descriptions: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise invalid(
                "images", f"{images.dtype} array of shape {images.shape}",
                "a uint8 array of shape [N, H, W, 1 or 3]",
            )
        if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(
            labels.dtype, np.integer
        ):
            raise invalid(
                "labels", f"{labels.dtype} array of shape {labels.shape}",
                f"an integer array of shape [{len(images)}]",
            )
        names = tuple(str(name) for name in self.class_names)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise invalid(
                "labels", f"values in [{labels.min()}, {labels.max()}]",
                f"indices into the {len(names)} class names",
            )
        descriptions = self.class_descriptions
        if descriptions is not None:
            descriptions = tuple(str(text) for text in descriptions)
            if len(descriptions) != len(names):
                raise invalid(
                    "class_descriptions", f"{len(descriptions)} descriptions",
                    f"one per class name ({len(names)})",
                )
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "class_descriptions", descriptions)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"ImageDataset(source={self.source!r}, images={len(self)}x"
            f"{'x'.join(map(str, self.image_shape))}, classes={self.num_classes})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def class_counts(self) -> np.ndarray:
        """Number of images per class, ``[num_classes]``."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """The images at `indices` (integer positions or a boolean mask), same classes."""
        index = np.asarray(indices)
        if index.dtype != bool and not np.issubdtype(index.dtype, np.integer):
            if index.size:
                raise invalid("indices", f"{index.dtype} array", "integer positions or a mask")
            index = index.astype(np.int64)
        return ImageDataset(
            images=self.images[index],
            labels=self.labels[index],
            class_names=self.class_names,
            source=self.source,
            class_descriptions=self.class_descriptions,
        )


# --------------------------------------------------------------------------- public entry points


def load_dataset(
    spec: str,
    split: str = "train",
    *,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    exclude_classes: str | os.PathLike[str] | Iterable[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    cache: bool = True,
) -> ImageDataset:
    """Load one split (or ``a+b`` splits) of the dataset `spec`; see the module docstring.

    `image_size` is ``S`` or ``(H, W)``; `channels` 1 or 3; `exclude_classes` a file with one
    class name per line (blank lines and ``#`` comments ignored) or an iterable of names;
    `limit` keeps at most that many images, chosen per class with `seed`; `data_dir` is the
    tensorflow-datasets data directory; `cache=False` neither reads nor writes the cache.
    """
    size = _check_image_size(image_size)
    _check_choice("channels", channels, (None, 1, 3))
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1
    ):
        raise invalid("limit", limit, "a positive integer or None")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise invalid("seed", seed, "an integer")
    parts = _parse_split(split)
    excluded = _read_class_list(exclude_classes) if exclude_classes is not None else None

    started = time.perf_counter()
    kind, target = _resolve_spec(spec)
    if kind == "tfds":
        loaded = _load_tfds(target, split, parts, size, channels, data_dir, cache)
    else:
        loaded = _load_local(spec, Path(target), parts, size, channels, cache)
    images, labels, names, descriptions = loaded
    dataset = ImageDataset(images, labels, names, f"{spec}:{split}", descriptions)
    if excluded is not None:
        dataset = _exclude(dataset, excluded)
    if limit is not None and limit < len(dataset):
        dataset = dataset.subset(_stratified_indices(dataset.labels, int(limit), int(seed)))
    logger.info(
        "loaded %s: %d images of %s, %d classes in %.1fs",
        dataset.source, len(dataset), dataset.image_shape, dataset.num_classes,
        time.perf_counter() - started,
    )
    return dataset


def split_names(spec: str, *, data_dir: str | None = None) -> tuple[str, ...]:
    """The splits `spec` offers (``("all",)`` for a folder or array file without splits).

    For a tensorflow-datasets name that is not prepared yet: offline a `UsageError`, online ``()``
    (tfds learns the splits while downloading).
    """
    kind, target = _resolve_spec(spec)
    if kind == "tfds":
        builder = _tfds_builder(target, data_dir)
        if not builder.is_prepared():
            if not _can_download():
                raise _not_prepared(target, data_dir)
            return ()
        return tuple(builder.info.splits)
    source = _open_source(spec, Path(target))
    try:
        return source.splits()
    finally:
        source.close()


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$MEXT_CACHE_DIR`` or ``~/.cache/mext``."""
    configured = os.environ.get("MEXT_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "mext"


# ---------------------------------------------------------------------------- argument checking


def _check_image_size(image_size: int | tuple[int, int] | None) -> Size | None:
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        pair: tuple[Any, ...] = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        pair = tuple(image_size)
    else:
        raise invalid("image_size", image_size, "a positive integer, (height, width) or None")
    if not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in pair
    ):
        raise invalid("image_size", image_size, "a positive integer, (height, width) or None")
    return int(pair[0]), int(pair[1])


def _check_choice(argument: str, value: object, choices: tuple[object, ...]) -> None:
    if isinstance(value, bool) or value not in choices:
        raise invalid(argument, value, "one of " + ", ".join(map(repr, choices)))


def _parse_split(split: str) -> list[str]:
    if not isinstance(split, str) or not split.strip():
        raise invalid("split", split, "a split name such as 'train', or several joined by '+'")
    parts = [part.strip() for part in split.split("+")]
    if not all(parts):
        raise invalid("split", split, "split names joined by '+' with none empty")
    repeated = sorted({part for part in parts if parts.count(part) > 1})
    if repeated:
        raise invalid("split", split, f"each split at most once ({repeated[0]!r} is repeated)")
    return parts


def _read_class_list(exclude: str | os.PathLike[str] | Iterable[str]) -> list[str]:
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


def _resolve_spec(spec: str) -> tuple[str, str]:
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
    if text.lower().endswith(_FILE_SUFFIXES) or text.startswith((".", "~", os.sep)):
        raise invalid("spec", text, "an existing file or folder (no such path)")
    if not re.fullmatch(r"[a-z][a-z0-9_]*(/[\w.\-]+)?(:[\w.*]+)?", text):
        raise invalid(
            "spec", text, "an existing path, or a tensorflow-datasets name such as 'cifar10'"
        )
    return "tfds", text


# ------------------------------------------------------------------------ tensorflow-datasets


def _import_tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise UsageError(
            "spec names a tensorflow-datasets dataset but tensorflow-datasets is not installed; "
            f"pip install tensorflow-datasets or {_LOCAL_COPY_HINT}"
        ) from err
    return tfds


def _tfds_builder(name: str, data_dir: str | None) -> Any:
    tfds = _import_tfds()
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise invalid(
            "spec", name,
            "an existing path or a registered tensorflow-datasets name (no such path or dataset)",
        ) from err


def _tfds_root(data_dir: str | None) -> str:
    return data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"


def _not_prepared(name: str, data_dir: str | None, reason: str = "") -> UsageError:
    why = reason or "this machine cannot download it"
    return UsageError(
        f"dataset {name!r} is not prepared in {_tfds_root(data_dir)} and {why}; "
        f"{_LOCAL_COPY_HINT}"
    )


def can_download() -> bool:
    """Whether tensorflow-datasets may download: ``MEXT_OFFLINE``, else a TCP probe."""
    return _can_download()


def _can_download() -> bool:
    """Whether tensorflow-datasets may download: ``MEXT_OFFLINE``, else a TCP probe."""
    setting = os.environ.get("MEXT_OFFLINE", "").strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return False
    if setting in ("0", "false", "no", "off"):
        return True
    if setting:
        raise invalid("MEXT_OFFLINE", setting, "1/true/yes (offline) or 0/false/no (online)")
    try:
        socket.create_connection(_PROBE_ADDRESS, timeout=3).close()
    except OSError:
        logger.info("no connection to %s:%d: treating this machine as offline", *_PROBE_ADDRESS)
        return False
    return True


def _load_tfds(
    name: str, split: str, parts: list[str], size: Size | None, channels: int | None,
    data_dir: str | None, cache: bool = True,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], None]:
    tfds = _import_tfds()
    builder = _tfds_builder(name, data_dir)
    if not builder.is_prepared():
        if not _can_download():
            raise _not_prepared(name, data_dir)
        logger.info("downloading %s into %s", name, _tfds_root(data_dir))
        try:
            builder.download_and_prepare()
        except Exception as err:  # network, checksum or disk failures all end the same way
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise _not_prepared(
                name, data_dir, f"downloading it failed ({type(err).__name__}: {reason[:200]})"
            ) from err
    available = tuple(builder.info.splits)
    for part in parts:
        if part.split("[", 1)[0] not in available:
            raise invalid("split", split, f"splits of {name} among {_quoted(available)}")
    # Prepared data are decoded once per split, size and channels, then read from the cache
    # (a quickstart reads CIFAR-10's splits in four processes).
    cached = None
    if cache:
        root = Path(_tfds_root(data_dir)).expanduser().resolve()
        cached = _cache_key(root / ("tfds_" + re.sub(r"[^A-Za-z0-9_-]+", "_", name)),
                            {"tfds_version": str(builder.version)}, split, size, channels)
        hit = _cache_read(cached)
        if hit is not None:
            return hit[0].images, hit[0].labels, hit[1].class_names, None
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2:
        raise invalid("spec", name, "a tensorflow-datasets dataset with (image, label) keys")
    image_key, label_key = keys
    label_feature = builder.info.features[label_key]
    image_shape = tuple(builder.info.features[image_key].shape)
    if image_shape and None not in image_shape:
        data = tfds.load(
            name, split=split, as_supervised=True, data_dir=data_dir, download=False,
            batch_size=-1,
        )
        images, labels = (np.asarray(a) for a in tfds.as_numpy(data))
        images = _transform_array(images, size, channels, spec=name)
    else:
        # Images of varying size (Imagenette, Caltech-101): read them still encoded and decode
        # each with Pillow straight to its final size (as image folders are), so the decoded
        # full-size images are never all held at once.
        data = tfds.load(
            name, split=split, as_supervised=True, data_dir=data_dir, download=False,
            decoders={image_key: tfds.decode.SkipDecoding()},
        )
        pairs = [(bytes(encoded), int(label)) for encoded, label in tfds.as_numpy(data)]
        labels = np.asarray([label for _, label in pairs], dtype=np.int64)
        images = _stack(
            _map_chunks(lambda pair: _decode_one(pair[0], size, channels, name), pairs),
            channels, spec=name,
        )
    if hasattr(label_feature, "names"):
        class_names = tuple(label_feature.names)
    else:
        class_names = tuple(str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0))
    labels = labels.astype(np.int64)
    if cached is not None:
        _cache_write(cached, _Part(images, labels), _Meta(class_names))
    return images, labels, class_names, None


def _decode_one(encoded: bytes, size: Size | None, channels: int | None, spec: str) -> np.ndarray:
    """One encoded image (JPEG, PNG, ...) decoded by Pillow, converted and resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(encoded)) as image:
            return _transform_one(image, size, channels)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise invalid("spec", spec, "readable images (one cannot be decoded: "
                      f"{_decode_reason(err)})") from err


def _decode_reason(err: Exception) -> str:
    """Why Pillow could not decode an image, without the repr of its in-memory file."""
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return "not an image format Pillow reads"
    return str(err)


# ------------------------------------------------------------------------------- local sources


@dataclass
class _Part:
    images: np.ndarray
    labels: np.ndarray


@dataclass
class _Meta:
    class_names: tuple[str, ...]
    descriptions: tuple[str, ...] | None = None


class _Container:
    """Files of a directory or a zip archive, named by posix paths relative to its root."""

    def __init__(self, spec: str, path: Path) -> None:
        self.spec = spec
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._stats: dict[str, tuple[int, int]] = {}
        if path.is_dir():
            for folder, subfolders, files in os.walk(path):
                subfolders.sort()
                rel = Path(folder).relative_to(path).as_posix()
                for name in sorted(files):
                    stat = os.stat(os.path.join(folder, name))
                    key = name if rel == "." else f"{rel}/{name}"
                    self._stats[key] = (stat.st_size, stat.st_mtime_ns)
            self.names = list(self._stats)
        else:
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as err:
                raise invalid("spec", spec, f"a readable zip archive ({err})") from err
            self.names = [info.filename for info in self._zip.infolist() if not info.is_dir()]
        self.names = [name for name in self.names if not _hidden(name)]

    def read(self, name: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(name)
            return (self.path / name).read_bytes()
        except (OSError, KeyError, zipfile.BadZipFile) as err:
            raise invalid("spec", self.spec, f"a readable file {name!r} ({err})") from err

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _hidden(name: str) -> bool:
    return any(part.startswith((".", "__MACOSX")) for part in name.split("/"))


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in _IMAGE_SUFFIXES


class _FolderSource:
    """``[<split>/]<class>/<image>`` in a directory or zip."""

    cacheable = True

    def __init__(self, container: _Container) -> None:
        self.container = container
        spec = container.spec
        images = [name for name in container.names if _is_image(name)]
        if not images:
            raise invalid(
                "spec", spec,
                "an image folder or zip ([<split>/]<class>/<image>), a Tiny-ImageNet folder, "
                "or .npz/.npy/.tar arrays (found no image files)",
            )
        paths = [name.split("/") for name in images]
        self.prefix = ""
        while (
            len({p[0] for p in paths}) == 1
            and min(len(p) for p in paths) >= 3
            and paths[0][0].lower() not in _SPLIT_FOLDER_NAMES
        ):
            self.prefix += paths[0][0] + "/"
            paths = [p[1:] for p in paths]
        depths = {len(p) for p in paths}
        if depths == {2}:
            self.members = {_SINGLE_SPLIT: [("/".join(p), p[0]) for p in paths]}
        elif depths == {3}:
            self.members = {}
            for p in paths:
                self.members.setdefault(p[0], []).append(("/".join(p[1:]), p[1]))
        else:
            raise invalid(
                "spec", spec,
                "images all at <class>/<image> or all at <split>/<class>/<image> "
                f"(found images at depths {sorted(d - 1 for d in depths)})",
            )
        self.meta = _Meta(tuple(sorted({cls for m in self.members.values() for _, cls in m})))

    def splits(self) -> tuple[str, ...]:
        return tuple(self.members)

    def build(self, split: str, size: Size | None, channels: int | None) -> dict[str, _Part]:
        index = {name: i for i, name in enumerate(self.meta.class_names)}
        members = sorted(self.members[split])
        prefix = self.prefix + ("" if split == _SINGLE_SPLIT else split + "/")
        files = [prefix + rel for rel, _ in members]
        labels = np.array([index[cls] for _, cls in members], dtype=np.int64)
        return {split: _Part(_decode_files(self.container, files, size, channels), labels)}

    def close(self) -> None:
        self.container.close()


class _TinyImageNetSource:
    """Tiny-ImageNet-200: ``wnids.txt``, ``words.txt``, ``train/<wnid>/images``, ``val/``."""

    cacheable = True

    def __init__(self, container: _Container, wnids_name: str) -> None:
        self.container = container
        spec = container.spec
        root = wnids_name[: -len("wnids.txt")]
        self.root = root
        wnids = _text_lines(container.read(wnids_name), spec, wnids_name)
        if not wnids or len(set(wnids)) != len(wnids):
            raise invalid("spec", spec, f"distinct wnids, one a line, in {wnids_name}")
        words: dict[str, str] = {}
        if root + "words.txt" in container.names:
            for line in _text_lines(container.read(root + "words.txt"), spec, "words.txt"):
                wnid, _, text = line.partition("\t")
                words[wnid.strip()] = text.strip()
        descriptions = tuple(words.get(w, "") for w in wnids) if words else None
        self.meta = _Meta(tuple(wnids), descriptions)
        known = set(wnids)
        self.members: dict[str, list[tuple[str, str]]] = {}
        val_folder: list[tuple[str, str]] = []
        val_flat: dict[str, str] = {}
        for name in container.names:
            if not name.startswith(root) or not _is_image(name):
                continue
            parts = name[len(root):].split("/")
            if len(parts) == 4 and parts[0] == "train" and parts[2] == "images":
                self._add("train", name, parts[1], known, wnids_name)
            elif len(parts) == 4 and parts[0] == "val" and parts[2] == "images":
                val_folder.append((name, parts[1]))
            elif len(parts) == 3 and parts[0] == "val" and parts[1] == "images":
                val_flat[parts[2]] = name
        annotations = root + "val/val_annotations.txt"
        if val_flat and annotations in container.names:
            for line in _text_lines(container.read(annotations), spec, annotations):
                columns = line.split("\t")
                if len(columns) < 2 or columns[0] not in val_flat:
                    raise invalid(
                        "spec", spec,
                        f"lines '<file>\\t<wnid>...' naming files of val/images in {annotations} "
                        f"(got {line[:60]!r})",
                    )
                self._add("val", val_flat[columns[0]], columns[1], known, annotations)
        for name, wnid in val_folder:
            self._add("val", name, wnid, known, name)
        if not self.members:
            raise invalid(
                "spec", spec, f"Tiny-ImageNet images in {root}train/<wnid>/images/ or {root}val/"
            )

    def _add(self, split: str, name: str, wnid: str, known: set[str], where: str) -> None:
        if wnid not in known:
            raise invalid("spec", self.container.spec, f"wnids listed in wnids.txt ({where} "
                                                       f"names {wnid!r})")
        self.members.setdefault(split, []).append((name, wnid))

    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in ("train", "val") if s in self.members)

    def build(self, split: str, size: Size | None, channels: int | None) -> dict[str, _Part]:
        index = {name: i for i, name in enumerate(self.meta.class_names)}
        members = self.members[split]
        if split == "train":
            members = sorted(members, key=lambda m: (index[m[1]], m[0]))
        files = [name for name, _ in members]
        labels = np.array([index[wnid] for _, wnid in members], dtype=np.int64)
        return {split: _Part(_decode_files(self.container, files, size, channels), labels)}

    def close(self) -> None:
        self.container.close()


class _ArraySource:
    """``x_<split>``/``y_<split>`` arrays from a .npz, a .npy pair, a directory or a tar."""

    def __init__(self, spec: str, path: Path) -> None:
        self.spec = spec
        self.path = path
        self.cacheable = False
        self._npz: Any = None
        self._pairs: dict[str, tuple[Any, Any]] = {}  # split -> (x, y): keys, paths or arrays
        self._class_list: list[str] | None = None
        self._meta: _Meta | None = None
        lower = path.name.lower()
        if path.is_dir():
            for file in sorted(path.iterdir()):
                split = _array_split(file.name, "x")
                if split is not None:
                    self._pairs[split] = (file, file.with_name("y" + file.name[1:]))
            self._class_list = _class_file(path / "classes.txt", path / "classes.json", spec)
        elif lower.endswith(".npz"):
            self._open_npz()
        elif lower.endswith(".npy"):
            split = _array_split(path.name, "x")
            if split is not None:
                self._pairs[split] = (path, path.with_name("y" + path.name[1:]))
            else:
                self._pairs[_SINGLE_SPLIT] = (path, path.with_name(path.stem + "_labels.npy"))
        else:
            self.cacheable = True
            self._read_tar()
        if self._class_list is None and not path.is_dir():
            stem = _stem(path)
            self._class_list = _class_file(
                path.with_name(stem + ".classes.txt"), path.with_name(stem + ".classes.json"), spec
            ) or _class_file(path.with_name("classes.txt"), path.with_name("classes.json"), spec)
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
            split = _array_split(key + ".npy", "x")
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
                    if not member.isfile() or _hidden(member.name):
                        continue
                    if base.lower() in ("classes.txt", "classes.json"):
                        data = tar.extractfile(member).read()  # type: ignore[union-attr]
                        self._class_list = _parse_class_list(data, base, self.spec)
                    elif _array_split(base, "x") or _array_split(base, "y"):
                        data = tar.extractfile(member).read()  # type: ignore[union-attr]
                        arrays[base.lower()] = self._load(io.BytesIO(data), member.name)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise invalid("spec", self.spec, f"a readable tar archive ({err})") from err
        for name, x in arrays.items():
            split = _array_split(name, "x")
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

    def build(self, split: str, size: Size | None, channels: int | None) -> dict[str, _Part]:
        wanted = self._pairs if self.cacheable else {split: self._pairs[split]}
        raw = {name: (self._load(x), self._load(y)) for name, (x, y) in wanted.items()}
        labels = [y for _, y in raw.values()]
        labels += [self._load(y) for name, (_, y) in self._pairs.items() if name not in raw]
        meta = self._make_meta(labels)
        parts = {}
        for name, (x, y) in raw.items():
            images, y = _check_arrays(x, y, self.spec, name, len(meta.class_names))
            parts[name] = _Part(_transform_array(images, size, channels, self.spec), y)
        self._meta = meta
        return parts

    def _make_meta(self, all_labels: list[np.ndarray]) -> _Meta:
        if self._class_list is not None:
            return _Meta(tuple(self._class_list))
        highest = max((int(np.max(y)) for y in all_labels if np.size(y)), default=-1)
        return _Meta(tuple(str(i) for i in range(highest + 1)))

    @property
    def meta(self) -> _Meta:
        assert self._meta is not None, "build() sets the class names"
        return self._meta

    def close(self) -> None:
        if self._npz is not None:
            self._npz.close()


def _array_split(name: str, letter: str) -> str | None:
    """``x_train.npy`` -> ``train``, ``x.npy`` -> ``all``, anything else None."""
    match = re.fullmatch(rf"{letter}(?:_(.+))?\.npy", name, flags=re.IGNORECASE)
    if not match:
        return None
    return match.group(1) or _SINGLE_SPLIT


def _stem(path: Path) -> str:
    lower = path.name.lower()
    for suffix in sorted(_FILE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _class_file(txt: Path, js: Path, spec: str) -> list[str] | None:
    for path in (txt, js):
        if path.is_file():
            logger.info("class names of %s from %s", spec, path)
            return _parse_class_list(path.read_bytes(), path.name, spec)
    return None


def _parse_class_list(data: bytes, name: str, spec: str) -> list[str]:
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
    return _text_lines(data, spec, name)


def _text_lines(data: bytes, spec: str, name: str) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise invalid("spec", spec, f"UTF-8 text in {name} ({err})") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


def _check_arrays(
    x: np.ndarray, y: np.ndarray, spec: str, split: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
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


def _open_source(spec: str, path: Path) -> Any:
    lower = path.name.lower()
    if path.is_dir() and any(_array_split(p.name, "x") for p in path.iterdir()):
        return _ArraySource(spec, path)
    if path.is_dir() or lower.endswith(".zip"):
        container = _Container(spec, path)
        wnids = [name for name in container.names if PurePosixPath(name).name == "wnids.txt"]
        if wnids:
            return _TinyImageNetSource(container, min(wnids, key=lambda n: n.count("/")))
        return _FolderSource(container)
    if lower.endswith((".npz", ".npy") + _TAR_SUFFIXES):
        return _ArraySource(spec, path)
    raise invalid(
        "spec", spec,
        "a folder, .zip, .npz, .npy or .tar[.gz|.xz|.bz2] file, or a tensorflow-datasets name",
    )


def _resolve_part(source: Any, part: str, split: str) -> str:
    available = source.splits()
    if part in available:
        return part
    if part in ("train", _SINGLE_SPLIT) and available == (_SINGLE_SPLIT,):
        return _SINGLE_SPLIT
    extra = " (or 'train', the whole set)" if available == (_SINGLE_SPLIT,) else ""
    raise invalid("split", split, f"one of {_quoted(available)}{extra}, or several joined by '+'")


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _fingerprint(path: Path) -> dict[str, Any]:
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
    stem = _stem(path)
    companions = [  # files beside it that change what it loads: labels, class lists
        path.with_name("y" + path.name[1:]), path.with_name(path.stem + "_labels.npy"),
        path.with_name(stem + ".classes.txt"), path.with_name(stem + ".classes.json"),
        path.with_name("classes.txt"), path.with_name("classes.json"),
    ]
    for companion in companions:
        if companion != path and companion.is_file():
            info = companion.stat()
            found[companion.name] = f"{info.st_size}:{info.st_mtime_ns}"
    return found


def _load_local(
    spec: str, path: Path, parts: list[str], size: Size | None, channels: int | None,
    use_cache: bool,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...] | None]:
    path = path.resolve()
    lower = path.name.lower()
    maybe_cached = use_cache and (
        path.is_dir() or lower.endswith((".zip",) + _TAR_SUFFIXES) or size is not None
    )
    fingerprint = _fingerprint(path) if maybe_cached else {}
    found: dict[str, tuple[_Part, _Meta]] = {}
    if maybe_cached:
        for part in parts:
            hit = _cache_read(_cache_key(path, fingerprint, part, size, channels))
            if hit is not None:
                found[part] = hit
    missing = [part for part in parts if part not in found]
    if missing:
        source = _open_source(spec, path)
        try:
            resolved = {part: _resolve_part(source, part, "+".join(parts)) for part in missing}
            fresh: dict[str, _Part] = {}
            for part, canonical in resolved.items():
                if canonical not in fresh:
                    started = time.perf_counter()
                    built = source.build(canonical, size, channels)
                    logger.info(
                        "read %s split %s in %.1fs", spec, canonical,
                        time.perf_counter() - started,
                    )
                    fresh.update(built)
                    if maybe_cached and (source.cacheable or size is not None):
                        for name, item in built.items():
                            stored = part if name == canonical else name
                            key = _cache_key(path, fingerprint, stored, size, channels)
                            _cache_write(key, item, source.meta)
                found[part] = (fresh[canonical], source.meta)
        finally:
            source.close()
    metas = {found[part][1].class_names for part in parts}
    assert len(metas) == 1, "every split of one source shares its class names"
    meta = found[parts[0]][1]
    images = _stack_parts([found[part][0].images for part in parts], channels, spec)
    labels = np.concatenate([found[part][0].labels for part in parts])
    return images, labels, meta.class_names, meta.descriptions


# ------------------------------------------------------------------------- decoding, transforms


def _map_chunks(function: Callable[[Any], np.ndarray], items: Sequence[Any]) -> list[np.ndarray]:
    """`function` over `items`, in chunks on a thread pool when there are several chunks."""
    chunks = (items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK))
    return _run_chunks(function, chunks, -(-len(items) // _CHUNK))


def _run_chunks(
    function: Callable[[Any], np.ndarray], chunks: Iterable[Sequence[Any]], count: int
) -> list[np.ndarray]:
    """Apply `function` to every item of `chunks` (consumed lazily, in order) on a thread pool.

    Pillow releases the GIL while it decodes and resizes, so threads overlap that work with the
    main thread, which produces the chunks (reading a zip, for one, is not thread-safe).
    """
    workers = min(count, os.cpu_count() or 1, 8)

    def run(chunk: Sequence[Any]) -> list[np.ndarray]:
        return [function(item) for item in chunk]

    if workers <= 1:
        return [out for chunk in chunks for out in run(chunk)]
    with ThreadPoolExecutor(workers) as pool:
        return [out for done in pool.map(run, chunks) for out in done]


def _decode_files(
    container: _Container, files: list[str], size: Size | None, channels: int | None
) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    def decode(item: tuple[str, bytes]) -> np.ndarray:
        name, data = item
        try:
            with Image.open(io.BytesIO(data)) as image:
                return _transform_one(image, size, channels)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise invalid(
                "spec", container.spec,
                f"readable images ({name!r} cannot be decoded: {_decode_reason(err)})"
            ) from err

    chunks = (
        [(name, container.read(name)) for name in files[i:i + _CHUNK]]
        for i in range(0, len(files), _CHUNK)
    )
    return _stack(_run_chunks(decode, chunks, -(-len(files) // _CHUNK)), channels,
                  container.spec)


def _transform_one(image: Any, size: Size | None, channels: int | None) -> np.ndarray:
    """A PIL image (or uint8 ``[H, W(, C)]`` array) in the wanted mode and size, as an array."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        array = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        image = Image.fromarray(array)
    if channels == 1:
        mode = "L"
    elif channels == 3:
        mode = "RGB"
    else:
        mode = "L" if image.mode in _GREY_MODES else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _stack(arrays: list[np.ndarray], channels: int | None, spec: str) -> np.ndarray:
    """``[N, H, W, C]`` from ``[H, W]`` (grey) and ``[H, W, 3]`` arrays; grey joins RGB as RGB."""
    if not arrays:
        return np.zeros((0, 0, 0, channels or 3), np.uint8)
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        first, second = sorted(shapes)[:2]
        raise invalid(
            "image_size", None,
            f"a size for {spec}, whose images differ in size ({first[0]}x{first[1]} and "
            f"{second[0]}x{second[1]})",
        )
    colour = any(a.ndim == 3 for a in arrays)
    if colour:
        arrays = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=-1) for a in arrays]
        return np.stack(arrays)
    return np.stack(arrays)[..., np.newaxis]


def _transform_array(
    images: np.ndarray, size: Size | None, channels: int | None, spec: str
) -> np.ndarray:
    """Resize and convert a ``[N, H, W, C]`` uint8 array (no work when nothing changes)."""
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if not len(images):
        height, width = size or images.shape[1:3]
        return np.zeros((0, height, width, channels or images.shape[-1]), np.uint8)
    same_size = size is None or tuple(images.shape[1:3]) == size
    if same_size and channels in (None, images.shape[-1]):
        return images
    if same_size and channels == 3 and images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    out = _stack(_map_chunks(lambda img: _transform_one(img, size, channels), images), channels,
                 spec)
    return out


def _stack_parts(parts: list[np.ndarray], channels: int | None, spec: str) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    if len({p.shape[1:3] for p in parts}) > 1:
        raise invalid(
            "image_size", None,
            f"a size for {spec}, whose splits differ in image size "
            f"({' and '.join(str(p.shape[1:3]) for p in parts)})",
        )
    if len({p.shape[-1] for p in parts}) > 1:
        parts = [p if p.shape[-1] == 3 else np.repeat(p, 3, axis=-1) for p in parts]
    return np.concatenate(parts)


# ----------------------------------------------------------------------------- class selection


def _exclude(dataset: ImageDataset, excluded: list[str]) -> ImageDataset:
    unknown = [name for name in excluded if name not in dataset.class_names]
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise invalid(
            "exclude_classes", unknown[0] + more,
            f"class names of {dataset.source} ({dataset.num_classes} classes, e.g. "
            f"{_quoted(dataset.class_names[:3])})",
        )
    drop = set(excluded)
    keep = [i for i, name in enumerate(dataset.class_names) if name not in drop]
    if not keep:
        raise invalid("exclude_classes", f"{len(drop)} names", "to leave at least one class")
    remap = np.full(dataset.num_classes, -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    mask = remap[dataset.labels] >= 0
    descriptions = dataset.class_descriptions
    return ImageDataset(
        images=dataset.images[mask],
        labels=remap[dataset.labels[mask]],
        class_names=tuple(dataset.class_names[i] for i in keep),
        source=dataset.source,
        class_descriptions=None if descriptions is None else tuple(descriptions[i] for i in keep),
    )


def _stratified_indices(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted positions of `limit` images, each class represented in proportion to its size."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (limit / len(labels))
    take = np.floor(quota).astype(np.int64)
    short = limit - int(take.sum())
    if short:
        order = np.lexsort((rng.random(len(classes)), -(quota - take)))
        take[order[:short]] += 1
    chosen = [
        rng.permutation(np.flatnonzero(labels == cls))[:k] for cls, k in zip(classes, take)
    ]
    return np.sort(np.concatenate(chosen))


# ----------------------------------------------------------------------------------- the cache


def _cache_key(
    path: Path, fingerprint: dict[str, Any], split: str, size: Size | None, channels: int | None
) -> Path:
    key = json.dumps(
        {
            "format": _CACHE_FORMAT, "path": str(path), **fingerprint, "split": split,
            "image_size": size, "channels": channels,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{_stem(path)}-{split}")[:80]
    return cache_dir() / f"{safe}-{digest}.npz"


def _cache_read(path: Path) -> tuple[_Part, _Meta] | None:
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
    return _Part(images, labels.astype(np.int64)), _Meta(names, descriptions)


def _cache_write(path: Path, part: _Part, meta: _Meta) -> None:
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
