"""Cheap evasions of an OOD query detector: what a thief can do to its queries for free.

Atli et al.'s detector (`detector.ood`) separates the victim's data from natural images outside
the task. A thief who knows it is watched can transform each query before sending it, or dilute
its stream: these functions are those moves, applied to uint8 RGB batches ``[N, H, W, 3]``
(each returns a new uint8 batch of the same shape), so the detector and the per-client window
(`detector.aggregate`) can be measured under them (`benchmarks.defence_bench`):

* `jpeg` re-encodes at a JPEG quality (the issue's range: 50-95);
* `resize` downsamples by a factor and back (detail lost, size kept);
* `blur` applies a Gaussian blur of radius `sigma` pixels;
* `noise` adds seeded Gaussian pixel noise of standard deviation `sigma` (0..255 scale);
* `camouflage` interleaves a share of in-distribution images into the attack stream, as a
  thief who owns some of the victim's own domain would, to keep the window's OOD share low.

`apply(name, images, level, seed)` names them for command lines (`EVASIONS`);
`transformed_views` gives a batch under each of `CALIBRATION_TRANSFORMS`, the views a detector's
threshold is calibrated on so that benign users' JPEG, resized, blurred or noisy images stay
within its false-positive rate (`detector.robust.threshold_over_views`). Pillow does the
image work (its JPEG codec and filters are what a thief would use).

`augment(images, seed=...)` is the defender's side: a seeded random one of these transforms (at a
random strength in `AUGMENT_RANGES`, then JPEG half of the time) per image. Applied to *both* the
benign and the attack training images of a detector, the transform itself can never be what
separates them, so the detector has to learn the content (`benchmarks.evasion_bench`).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from common.errors import invalid

__all__ = ["AUGMENT_RANGES", "CALIBRATION_TRANSFORMS", "EVASIONS", "apply", "augment", "blur",
           "camouflage", "jpeg", "noise", "resize", "transformed_views"]


def _check_images(images: Any) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise invalid("images", f"{array.dtype} array of shape {array.shape}",
                      "uint8 RGB images [N, H, W, 3]")
    return array


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)) or not low <= float(value) <= high:
        raise invalid(name, value, f"a number in [{low:g}, {high:g}]")
    return float(value)


def _map(images: np.ndarray, function) -> np.ndarray:
    from PIL import Image

    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = np.asarray(function(Image.fromarray(image)).convert("RGB"), dtype=np.uint8)
    return out


def jpeg(images: Any, quality: int) -> np.ndarray:
    """Each image re-encoded as JPEG at `quality` (1..100) and decoded again."""
    array = _check_images(images)
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) \
            or not 1 <= quality <= 100:
        raise invalid("quality", quality, "an integer in [1, 100]")
    quality = int(quality)
    from PIL import Image

    def encode(image):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue()))

    return _map(array, encode)


def resize(images: Any, factor: float) -> np.ndarray:
    """Each image downsampled by `factor` (0 < factor <= 1, bilinear) and upsampled back."""
    array = _check_images(images)
    factor = _number("factor", factor, 1e-6, 1.0)
    h, w = array.shape[1:3]
    small = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
    from PIL import Image

    return _map(array, lambda im: im.resize(small, Image.BILINEAR).resize((w, h),
                                                                         Image.BILINEAR))


def blur(images: Any, sigma: float) -> np.ndarray:
    """Each image blurred with a Gaussian of radius `sigma` pixels (0: unchanged)."""
    array = _check_images(images)
    sigma = _number("sigma", sigma, 0.0, 100.0)
    from PIL import ImageFilter

    return _map(array, lambda im: im.filter(ImageFilter.GaussianBlur(radius=sigma)))


def noise(images: Any, sigma: float, *, seed: int = 0) -> np.ndarray:
    """Seeded Gaussian noise of standard deviation `sigma` (pixel units) added, rounded,
    clipped to 0..255."""
    array = _check_images(images)
    sigma = _number("sigma", sigma, 0.0, 255.0)
    rng = np.random.default_rng(seed)
    noisy = array.astype(np.float64) + rng.normal(0.0, sigma, size=array.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def camouflage(attack: Any, benign: Any, share: float, *, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """A query stream of every `attack` image with in-distribution images mixed in.

    `share` in [0, 1) is the fraction of the stream that is in-distribution: for N attack images
    the stream holds ``round(N * share / (1 - share))`` images drawn (seeded, with replacement
    only if `benign` is too small) from `benign`, at seeded random positions. Returns
    ``(stream, is_attack)``: uint8 ``[M, H, W, 3]`` and bool ``[M]``.
    """
    a = _check_images(attack)
    b = _check_images(benign)
    share = _number("share", share, 0.0, 0.99)
    if a.shape[1:] != b.shape[1:]:
        raise invalid("benign", f"images of shape {b.shape[1:]}",
                      f"the attack images' shape {a.shape[1:]}")
    extra = int(round(len(a) * share / (1.0 - share)))
    if extra and not len(b):
        raise invalid("benign", "0 images", "in-distribution images to mix in")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(b), size=extra, replace=extra > len(b)) if extra else \
        np.zeros(0, np.int64)
    stream = np.concatenate([a, b[picked]])
    is_attack = np.r_[np.ones(len(a), bool), np.zeros(extra, bool)]
    order = rng.permutation(len(stream))
    return stream[order], is_attack[order]


EVASIONS = {
    "jpeg": lambda images, level, seed: jpeg(images, int(level)),
    "resize": lambda images, level, seed: resize(images, level),
    "blur": lambda images, level, seed: blur(images, level),
    "noise": lambda images, level, seed: noise(images, level, seed=seed),
}


def apply(name: str, images: Any, level: float, *, seed: int = 0) -> np.ndarray:
    """One of `EVASIONS` by name (jpeg: quality; resize: factor; blur, noise: sigma)."""
    if name not in EVASIONS:
        raise invalid("evasion", name, f"one of {', '.join(EVASIONS)}")
    return EVASIONS[name](images, level, seed)


# The named transforms benign images are calibrated under (`detector.calibrate --transforms
# evasions`, `benchmarks.evasion_bench`): the JPEG range and one resize, blur and noise
# a user's photos plausibly carry.
CALIBRATION_TRANSFORMS: tuple[tuple[str, float], ...] = (
    ("jpeg", 95), ("jpeg", 75), ("jpeg", 50), ("resize", 0.5), ("blur", 1.0), ("noise", 8.0))


def transformed_views(images: Any, transforms: Any = CALIBRATION_TRANSFORMS, *, seed: int = 0
                      ) -> dict[str, np.ndarray]:
    """``{"none": images, "jpeg:75": ..., ...}``: `images` as sent and under each
    ``(name, level)`` of `transforms` (tags as `apply`'s name and level)."""
    array = _check_images(images)
    views = {"none": array}
    for name, level in transforms:
        views[f"{name}:{level:g}"] = apply(name, array, level, seed=seed)
    return views


# Strengths `augment` draws from, uniformly: what a thief can do for free without making its
# queries useless to itself (JPEG quality is an integer).
AUGMENT_RANGES: dict[str, tuple[float, float]] = {
    "jpeg": (50, 95),
    "resize": (0.4, 0.9),
    "blur": (0.3, 1.5),
    "noise": (2.0, 12.0),
}


def augment(images: Any, *, seed: int, share: float = 0.9,
            then_jpeg: float = 0.5) -> np.ndarray:
    """A seeded random evasion per image, for training a detector that survives them.

    A `share` of the images (seeded choice) each get one of `EVASIONS` chosen uniformly, at a
    strength drawn uniformly from `AUGMENT_RANGES`, and then (for non-JPEG transforms, with
    probability `then_jpeg`) a JPEG re-encoding at a random quality, as a thief who blurs and
    then saves as JPEG would; the rest are unchanged. Returns a new uint8 batch.
    """
    array = _check_images(images)
    share = _number("share", share, 0.0, 1.0)
    then_jpeg = _number("then_jpeg", then_jpeg, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    names = list(AUGMENT_RANGES)
    chosen = rng.random(len(array)) < share
    kinds = rng.integers(0, len(names), len(array))
    strengths = rng.random(len(array))
    jpeg_after = rng.random(len(array)) < then_jpeg
    qualities = rng.integers(AUGMENT_RANGES["jpeg"][0], AUGMENT_RANGES["jpeg"][1] + 1,
                             len(array))
    out = np.array(array, copy=True)
    for kind_index, name in enumerate(names):
        low, high = AUGMENT_RANGES[name]
        for i in np.flatnonzero(chosen & (kinds == kind_index)):
            level = low + strengths[i] * (high - low)
            one = EVASIONS[name](out[i:i + 1], round(level) if name == "jpeg" else level,
                                 int(seed) * 1_000_003 + int(i))
            if name != "jpeg" and jpeg_after[i]:
                one = jpeg(one, int(qualities[i]))
            out[i] = one[0]
    return out
