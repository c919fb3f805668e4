"""tensorflow-datasets: the one download policy of the toolkit, and a split read at any size.

A spec ``tfds:NAME`` (``tfds:cifar10``, ``tfds:mnist:3.0.1``, ``tfds:diabetic_retinopathy_detection/
250K``) or a bare registered name names a tensorflow-datasets dataset. Data already prepared in
the data folder (`data_dir`, else ``$TFDS_DATA_DIR`` read when the dataset is asked for, else
``~/tensorflow_datasets``) is read as is. Otherwise `prepared_builder` downloads it with tfds' own
``download_and_prepare`` if this machine is online, decided by ``MEXT_OFFLINE`` (``1``: never
download, ``0``: always try) or, when that is unset, by a 3-second TCP probe of
``storage.googleapis.com:443``. Offline, nothing is written and a `UsageError` says which local
copy to pass instead; a failed download says why in the same one line.

`read_split` streams a split (or a slice such as ``train[:1000]``): images of one fixed shape in
batches, images of varying size (Imagenette, Caltech-UCSD Birds, ImageNet) still encoded and
decoded by Pillow straight to their final size, as image folders are, so a split is never held
at full size and its pixels are those an image folder of the same files gives.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common.data.cache import Meta, Part, cache_key
from common.data.cache import read as read_cache
from common.data.cache import write as write_cache
from common.data.imaging import CHUNK, decode_bytes, decode_stream, transform_array
from common.data.spec import LOCAL_COPY_HINT, Size, quoted
from common.errors import UsageError, invalid

__all__ = [
    "builder",
    "can_download",
    "data_dir",
    "import_tfds",
    "load",
    "not_prepared",
    "prepared_builder",
    "read_split",
    "root",
]

logger = logging.getLogger(__name__)

_PROBE_ADDRESS = ("storage.googleapis.com", 443)


def import_tfds() -> Any:
    """The `tensorflow_datasets` module, or a `UsageError` saying to install it or what to pass."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise UsageError(
            "spec names a tensorflow-datasets dataset but tensorflow-datasets is not installed; "
            f"pip install tensorflow-datasets or {LOCAL_COPY_HINT}"
        ) from err
    return tfds


def data_dir(given: str | None) -> str | None:
    """The data folder to give tfds: `given`, else ``$TFDS_DATA_DIR`` as it is now (tfds itself
    reads it once, at import), else None (tfds' default)."""
    return given or os.environ.get("TFDS_DATA_DIR") or None


def root(given: str | None) -> str:
    """The data folder, for messages."""
    return data_dir(given) or "~/tensorflow_datasets"


def builder(name: str, given_dir: str | None) -> Any:
    """tfds' builder of `name` in the data folder; an unknown name is a `UsageError`."""
    tfds = import_tfds()
    try:
        return tfds.builder(name, data_dir=data_dir(given_dir))
    except tfds.core.registered.DatasetNotFoundError as err:
        raise invalid(
            "spec", name,
            "an existing path or a registered tensorflow-datasets name (no such path or dataset)",
        ) from err


def not_prepared(name: str, given_dir: str | None, reason: str = "") -> UsageError:
    """The one line for a dataset that is not prepared here and cannot be had now."""
    why = reason or "this machine cannot download it"
    return UsageError(
        f"dataset {name!r} is not prepared in {root(given_dir)} and {why}; {LOCAL_COPY_HINT}"
    )


def can_download() -> bool:
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


def prepared_builder(name: str, given_dir: str | None) -> Any:
    """The builder of `name`, downloaded and prepared first if it is not and this machine may."""
    found = builder(name, given_dir)
    if found.is_prepared():
        return found
    if not can_download():
        raise not_prepared(name, given_dir)
    logger.info("downloading %s into %s", name, root(given_dir))
    try:
        found.download_and_prepare()
    except Exception as err:  # network, checksum, manual files or disk: all end the same way
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise not_prepared(
            name, given_dir, f"downloading it failed ({type(err).__name__}: {reason[:200]})"
        ) from err
    return found


def read_split(
    found: Any, name: str, split: str, size: Size | None, channels: int | None,
    given_dir: str | None,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images, labels and class names of `split` of the prepared builder `found`."""
    tfds = import_tfds()
    keys = found.info.supervised_keys
    if not keys or len(keys) != 2:
        raise invalid("spec", name, "a tensorflow-datasets dataset with (image, label) keys")
    image_key, label_key = keys
    try:
        expected = int(found.info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError, AttributeError):
        expected = 0
    load = {"split": split, "as_supervised": True, "data_dir": data_dir(given_dir),
            "download": False}
    labels: list[np.ndarray] = []
    image_shape = tuple(found.info.features[image_key].shape)
    if image_shape and None not in image_shape:
        batches = tfds.as_numpy(tfds.load(name, batch_size=CHUNK, **load))
        images = []
        for x, y in batches:
            images.append(transform_array(np.asarray(x), size, channels, spec=name))
            labels.append(np.asarray(y, np.int64))
        if images:
            images = np.concatenate(images)
        else:
            height, width = size or image_shape[:2]
            images = np.zeros((0, height, width, channels or image_shape[-1]), np.uint8)
    else:
        data = tfds.load(name, decoders={image_key: tfds.decode.SkipDecoding()}, **load)

        def chunks() -> Iterator[list[bytes]]:
            chunk: list[bytes] = []
            for encoded, label in tfds.as_numpy(data):
                chunk.append(bytes(encoded))
                labels.append(np.asarray([label], np.int64))
                if len(chunk) == CHUNK:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

        images = decode_stream(lambda encoded: decode_bytes(encoded, size, channels, name),
                               chunks(), expected, size, channels, name)
    label_array = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    feature = found.info.features[label_key]
    if hasattr(feature, "names"):
        class_names = tuple(feature.names)
    else:
        count = int(label_array.max()) + 1 if len(label_array) else 0
        class_names = tuple(str(i) for i in range(count))
    return images, label_array, class_names


def load(
    name: str, split: str, parts: list[str], size: Size | None, channels: int | None,
    given_dir: str | None, use_cache: bool = True,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], None]:
    """`split` (``a+b`` joined as `parts`) of dataset `name`, prepared first if need be.

    Prepared data are decoded once per split, size and channels, then read from the cache (a
    quickstart reads CIFAR-10's splits in four processes).
    """
    found = prepared_builder(name, given_dir)
    available = tuple(found.info.splits)
    for part in parts:
        if part.split("[", 1)[0] not in available:
            raise invalid("split", split, f"splits of {name} among {quoted(available)}")
    key = None
    if use_cache:
        folder = Path(root(given_dir)).expanduser().resolve()
        key = cache_key(folder / ("tfds_" + re.sub(r"[^A-Za-z0-9_-]+", "_", name)),
                        {"tfds_version": str(found.version)}, split, size, channels)
        hit = read_cache(key)
        if hit is not None:
            return hit[0].images, hit[0].labels, hit[1].class_names, None
    images, labels, class_names = read_split(found, name, split, size, channels, given_dir)
    if key is not None:
        write_cache(key, Part(images, labels), Meta(class_names))
    return images, labels, class_names, None
