"""Decoding and resizing images: Pillow on a thread pool, the same pixels from every source.

An image folder, a zip, a Tiny-ImageNet set and a tensorflow-datasets split of images of varying
size are all decoded here, image by image, by Pillow straight to the size asked for (antialiased
bilinear resize; ITU-R 601 luma for one channel, grey copied to RGB for three); arrays of a fixed
size are converted the same way. Pillow releases the GIL while it decodes and resizes, so a pool
of threads overlaps that work with the thread that reads the archive, which feeds it in order and
at most a few chunks ahead (a split of ImageNet is never all held encoded at once). When the size
and the channels are known, the images are written into one array as they come.
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from common.data.spec import Size
from common.errors import invalid

__all__ = [
    "CHUNK",
    "decode_bytes",
    "decode_reason",
    "decode_stream",
    "lazy_map",
    "map_chunks",
    "stack",
    "stack_parts",
    "transform_array",
    "transform_one",
]

CHUNK = 256
"""Images per task of the thread pool."""
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})


def lazy_map(
    function: Callable[[Any], np.ndarray], chunks: Iterable[Sequence[Any]]
) -> Iterator[np.ndarray]:
    """`function` of every item of `chunks`, in order, on a thread pool.

    `chunks` is consumed lazily, at most two chunks per thread ahead of the results taken, in
    the calling thread (reading a zip, for one, is not thread-safe).
    """
    workers = min(os.cpu_count() or 1, 8)

    def run(chunk: Sequence[Any]) -> list[np.ndarray]:
        return [function(item) for item in chunk]

    iterator = iter(chunks)
    first = next(iterator, None)
    if first is None:
        return
    second = next(iterator, None)
    if second is None or workers <= 1:
        for chunk in ([first] if second is None else [first, second]):
            yield from run(chunk)
        for chunk in iterator:
            yield from run(chunk)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[list[np.ndarray]]] = deque(
            [pool.submit(run, first), pool.submit(run, second)])
        for chunk in iterator:
            pending.append(pool.submit(run, chunk))
            if len(pending) > 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def decode_stream(
    function: Callable[[Any], np.ndarray], chunks: Iterable[Sequence[Any]], count: int,
    size: Size | None, channels: int | None, spec: str,
) -> np.ndarray:
    """``[N, H, W, C]`` uint8 of `function` (an item to ``[H, W]`` or ``[H, W, C]``) over the
    items of `chunks`; `count` is how many are expected. With `size` and `channels` known the
    images go straight into one array (no second copy); otherwise `stack` joins them."""
    results = lazy_map(function, chunks)
    if size is None or channels is None:
        return stack(list(results), channels, spec)
    out = np.empty((count, size[0], size[1], channels), np.uint8)
    extra: list[np.ndarray] = []
    done = 0
    for array in results:
        array = array if array.ndim == 3 else array[..., np.newaxis]
        if done < count:
            out[done] = array
        else:
            extra.append(array)
        done += 1
    if extra:
        return np.concatenate([out, np.stack(extra)])
    return out[:done] if done < count else out


def map_chunks(function: Callable[[Any], np.ndarray], items: Sequence[Any]) -> list[np.ndarray]:
    """`function` over `items`, in chunks on a thread pool when there are several chunks."""
    return list(lazy_map(function, (items[i:i + CHUNK] for i in range(0, len(items), CHUNK))))


def transform_one(image: Any, size: Size | None, channels: int | None) -> np.ndarray:
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


def decode_bytes(
    encoded: bytes, size: Size | None, channels: int | None, spec: str, name: str | None = None
) -> np.ndarray:
    """One encoded image (JPEG, PNG, ...) decoded by Pillow, converted and resized.

    An image Pillow cannot read is a `UsageError` about `spec` (naming the file `name` if given).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(encoded)) as image:
            return transform_one(image, size, channels)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        which = "one" if name is None else repr(name)
        raise invalid("spec", spec, f"readable images ({which} cannot be decoded: "
                                    f"{decode_reason(err)})") from err


def decode_reason(err: Exception) -> str:
    """Why Pillow could not decode an image, without the repr of its in-memory file."""
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return "not an image format Pillow reads"
    return str(err)


def stack(arrays: list[np.ndarray], channels: int | None, spec: str) -> np.ndarray:
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


def transform_array(
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
    return stack(map_chunks(lambda img: transform_one(img, size, channels), images), channels,
                 spec)


def stack_parts(parts: list[np.ndarray], channels: int | None, spec: str) -> np.ndarray:
    """The images of several splits in one array (grey joins RGB as RGB)."""
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
