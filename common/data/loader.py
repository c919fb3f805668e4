"""`load_dataset` and its companions: a spec and a split in, an `ImageDataset` out.

The entry points of the data layer (see `common.data` for the spec forms). A local source is
opened by its layout (arrays, Tiny-ImageNet, image folder), read split by split through the
cache, and the splits asked for are joined; a tensorflow-datasets name goes through
`common.data.tfds_source`. Then classes are excluded and a seeded, class-stratified subset kept.
`sample_dataset` instead picks a seeded random sample of a split *before* decoding it (ImageNet's
1.28 million training images are never all decoded), and `prepare_dataset` makes a spec readable
here (a download where the policy allows) and says its splits.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from common.constraints import check_int
from common.data import tfds_source
from common.data.arrays import ArraySource, array_split
from common.data.cache import Meta, Part, cache_key, fingerprint
from common.data.cache import read as read_cache
from common.data.cache import write as write_cache
from common.data.dataset import ImageDataset
from common.data.folders import Container, FolderSource
from common.data.imaging import stack_parts
from common.data.spec import (
    SINGLE_SPLIT,
    TAR_SUFFIXES,
    Size,
    check_load_arguments,
    parse_split,
    quoted,
    read_class_list,
    resolve_spec,
)
from common.data.tinyimagenet import TinyImageNetSource
from common.errors import invalid

__all__ = [
    "count_images",
    "exclude_classes",
    "load_dataset",
    "prepare_dataset",
    "sample_dataset",
    "split_names",
]

logger = logging.getLogger(__name__)


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
    """Load one split (or ``a+b`` splits) of the dataset `spec`; see `common.data`.

    `image_size` is ``S`` or ``(H, W)``; `channels` 1 or 3; `exclude_classes` a file with one
    class name per line (blank lines and ``#`` comments ignored) or an iterable of names;
    `limit` keeps at most that many images, chosen per class with `seed`; `data_dir` is the
    tensorflow-datasets data directory; `cache=False` neither reads nor writes the cache.
    """
    size, channels = check_load_arguments(image_size, channels, limit, seed)
    parts = parse_split(split)
    excluded = read_class_list(exclude_classes) if exclude_classes is not None else None

    started = time.perf_counter()
    kind, target = resolve_spec(spec)
    if kind == "tfds":
        loaded = tfds_source.load(target, split, parts, size, channels, data_dir, cache)
    else:
        loaded = _load_local(spec, Path(target), parts, size, channels, cache)
    images, labels, names, descriptions = loaded
    dataset = ImageDataset(images, labels, names, f"{spec}:{split}", descriptions)
    if excluded is not None:
        dataset = _exclude(dataset, excluded)
    if limit is not None and limit < len(dataset):
        dataset = dataset.subset(_stratified_indices(dataset.labels, int(limit), int(seed)))
    _log_loaded(dataset, started)
    return dataset


def split_names(spec: str, *, data_dir: str | None = None) -> tuple[str, ...]:
    """The splits `spec` offers (``("all",)`` for a folder or array file without splits).

    For a tensorflow-datasets name that is not prepared yet: offline a `UsageError`, online ``()``
    (tfds learns the splits while downloading).
    """
    kind, target = resolve_spec(spec)
    if kind == "tfds":
        builder = tfds_source.builder(target, data_dir)
        if not builder.is_prepared():
            if not tfds_source.can_download():
                raise tfds_source.not_prepared(target, data_dir)
            return ()
        return tuple(builder.info.splits)
    source = _open_source(spec, Path(target))
    try:
        return source.splits()
    finally:
        source.close()


def prepare_dataset(spec: str, *, data_dir: str | None = None) -> tuple[str, ...]:
    """Make `spec` readable here and return its splits.

    A tensorflow-datasets name not prepared yet is downloaded and prepared where the download
    policy allows (``MEXT_OFFLINE``, else the probe), else a one-line `UsageError` says which
    local copy to pass; a path is only opened.
    """
    kind, target = resolve_spec(spec)
    if kind == "tfds":
        return tuple(tfds_source.prepared_builder(target, data_dir).info.splits)
    return split_names(spec)


def count_images(spec: str, split: str, *, data_dir: str | None = None) -> int:
    """How many images `split` of `spec` holds, without decoding any (a tensorflow-datasets name
    is prepared first, as `prepare_dataset` does)."""
    kind, target = resolve_spec(spec)
    if kind == "tfds":
        builder = tfds_source.prepared_builder(target, data_dir)
        available = tuple(builder.info.splits)
        if split.split("[", 1)[0] not in available:
            raise invalid("split", split, f"splits of {target} among {quoted(available)}")
        return int(builder.info.splits[split].num_examples)
    source = _open_source(spec, Path(target))
    try:
        return _split_size(source, _resolve_part(source, split, split))
    finally:
        source.close()


def sample_dataset(
    spec: str,
    split: str,
    count: int,
    *,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
) -> ImageDataset:
    """`count` images of `split` in a random order, chosen before any image is decoded.

    Image folders, zips and Tiny-ImageNet sets: a permutation seeded by `seed` of the split's
    files, of which the first `count` are decoded (in that order). tensorflow-datasets: the
    first `count` examples (``split[:count]``; tensorflow-datasets stores a dataset's examples
    shuffled, so they are a random sample; `seed` is not used). Arrays: a seeded permutation of
    the loaded split. Nothing is cached.
    """
    size, channels = check_load_arguments(image_size, channels, None, seed)
    check_int("count", count, min=1)
    started = time.perf_counter()
    kind, target = resolve_spec(spec)
    if kind == "tfds":
        available = count_images(spec, split, data_dir=data_dir)
        if count > available:
            raise invalid("count", count, f"at most {available} ({spec} has {available} "
                                          f"images in split {split!r})")
        images, labels, names, _ = tfds_source.load(
            target, f"{split}[:{count}]", [f"{split}[:{count}]"], size, channels, data_dir,
            use_cache=False)
        dataset = ImageDataset(images, labels, names, f"{spec}:{split}")
        _log_loaded(dataset, started)
        return dataset
    source = _open_source(spec, Path(target).resolve())
    try:
        canonical = _resolve_part(source, split, split)
        available = _split_size(source, canonical)
        if count > available:
            raise invalid("spec", spec, f"a split {split!r} of at least {count} images "
                                        f"(found {available})")
        index = np.random.default_rng(seed).permutation(available)[:count]
        if hasattr(source, "listing"):
            part = source.build(canonical, size, channels, index)[canonical]
        else:
            whole = source.build(canonical, size, channels)[canonical]
            part = Part(whole.images[index], whole.labels[index])
        meta = source.meta
    finally:
        source.close()
    dataset = ImageDataset(part.images, part.labels, meta.class_names, f"{spec}:{split}",
                           meta.descriptions)
    _log_loaded(dataset, started)
    return dataset


def exclude_classes(dataset: ImageDataset, names: Iterable[str], *,
                    missing_ok: bool = False) -> ImageDataset:
    """`dataset` without the classes `names` (their images and names; labels re-indexed).

    A name `dataset` does not have is a `UsageError` unless `missing_ok`.
    """
    names = list(names)
    if missing_ok:
        names = [name for name in names if name in dataset.class_names]
        if not names:
            return dataset
    return _exclude(dataset, names)


def _log_loaded(dataset: ImageDataset, started: float) -> None:
    logger.info(
        "loaded %s: %d images of %s, %d classes in %.1fs",
        dataset.source, len(dataset), dataset.image_shape, dataset.num_classes,
        time.perf_counter() - started,
    )


def _split_size(source: Any, split: str) -> int:
    if hasattr(source, "listing"):  # files: counted, not decoded
        return len(source.listing(split)[1])
    return len(source.build(split, None, None)[split].labels)


def _open_source(spec: str, path: Path) -> Any:
    lower = path.name.lower()
    if path.is_dir() and any(array_split(p.name, "x") for p in path.iterdir()):
        return ArraySource(spec, path)
    if path.is_dir() or lower.endswith(".zip"):
        container = Container(spec, path)
        wnids = [name for name in container.names if PurePosixPath(name).name == "wnids.txt"]
        if wnids:
            return TinyImageNetSource(container, min(wnids, key=lambda n: n.count("/")))
        return FolderSource(container)
    if lower.endswith((".npz", ".npy") + TAR_SUFFIXES):
        return ArraySource(spec, path)
    raise invalid(
        "spec", spec,
        "a folder, .zip, .npz, .npy or .tar[.gz|.xz|.bz2] file, or a tensorflow-datasets name",
    )


def _resolve_part(source: Any, part: str, split: str) -> str:
    available = source.splits()
    if part in available:
        return part
    if part in ("train", SINGLE_SPLIT) and available == (SINGLE_SPLIT,):
        return SINGLE_SPLIT
    extra = " (or 'train', the whole set)" if available == (SINGLE_SPLIT,) else ""
    raise invalid("split", split, f"one of {quoted(available)}{extra}, or several joined by '+'")


def _load_local(
    spec: str, path: Path, parts: list[str], size: Size | None, channels: int | None,
    use_cache: bool,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...] | None]:
    path = path.resolve()
    lower = path.name.lower()
    maybe_cached = use_cache and (
        path.is_dir() or lower.endswith((".zip",) + TAR_SUFFIXES) or size is not None
    )
    stamp = fingerprint(path) if maybe_cached else {}
    found: dict[str, tuple[Part, Meta]] = {}
    if maybe_cached:
        for part in parts:
            hit = read_cache(cache_key(path, stamp, part, size, channels))
            if hit is not None:
                found[part] = hit
    missing = [part for part in parts if part not in found]
    if missing:
        source = _open_source(spec, path)
        try:
            resolved = {part: _resolve_part(source, part, "+".join(parts)) for part in missing}
            fresh: dict[str, Part] = {}
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
                            key = cache_key(path, stamp, stored, size, channels)
                            write_cache(key, item, source.meta)
                found[part] = (fresh[canonical], source.meta)
        finally:
            source.close()
    metas = {found[part][1].class_names for part in parts}
    assert len(metas) == 1, "every split of one source shares its class names"
    meta = found[parts[0]][1]
    images = stack_parts([found[part][0].images for part in parts], channels, spec)
    labels = np.concatenate([found[part][0].labels for part in parts])
    return images, labels, meta.class_names, meta.descriptions


def _exclude(dataset: ImageDataset, excluded: list[str]) -> ImageDataset:
    unknown = [name for name in excluded if name not in dataset.class_names]
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise invalid(
            "exclude_classes", unknown[0] + more,
            f"class names of {dataset.source} ({dataset.num_classes} classes, e.g. "
            f"{quoted(dataset.class_names[:3])})",
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
