"""The data the OOD detector trains and calibrates on: both sets loaded at the victim's input
size (`load_training_sets`), the seeded, class-stratified (fit, held-out) split of each
(`training_split`; `detector.calibrate` re-creates exactly the held-out images from the stored
training config) and the seeded JPEG re-encoding (`jpeg_reencode`) that keeps the codec from
being the signal the detector learns. Numpy and Pillow; no TensorFlow.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from common.data import ImageDataset, load_dataset
from detector.config import DetectorConfig

__all__ = ["jpeg_reencode", "load_training_sets", "training_split", "with_images"]


def _holdout_split(dataset: ImageDataset, fraction: float, seed: int
                   ) -> tuple[ImageDataset, ImageDataset]:
    """Per-class seeded split: (fit, held out), at least one of each where possible."""
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label in np.unique(dataset.labels):
        members = np.flatnonzero(dataset.labels == label)
        count = int(round(len(members) * fraction))
        if len(members) > 1:
            count = min(max(count, 1), len(members) - 1)
        held.append(rng.permutation(members)[:count])
    mask = np.zeros(len(dataset), bool)
    if held:
        mask[np.concatenate(held)] = True
    return dataset.subset(~mask), dataset.subset(mask)



def jpeg_reencode(images: np.ndarray, share: float, *, seed: int,
                  qualities: tuple[int, int] = (50, 95)) -> np.ndarray:
    """A copy of `images` where a seeded random `share` went through JPEG (Pillow) at a random
    quality in `qualities`: the codec is a free choice of the attacker and a property of how the
    victim's data was stored, never a signal the detector may learn (a CIFAR-10 copy stored as
    JPEG against downsampled Tiny-ImageNet photos is separable by its 8x8 block artefacts alone).
    """
    rng = np.random.default_rng(seed)
    chosen = np.flatnonzero(rng.random(len(images)) < share)
    quality = rng.integers(qualities[0], qualities[1] + 1, len(chosen))
    out = np.array(images, copy=True)
    for index, q in zip(chosen, quality):
        buffer = io.BytesIO()
        Image.fromarray(out[index]).save(buffer, format="JPEG", quality=int(q))
        out[index] = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return out



def with_images(dataset: ImageDataset, images: np.ndarray) -> ImageDataset:
    return ImageDataset(images, dataset.labels, dataset.class_names, dataset.source,
                        dataset.class_descriptions)


def load_training_sets(config: DetectorConfig) -> tuple[ImageDataset, ImageDataset]:
    """The benign and attack sets of `config` as RGB at the victim's input size."""
    size = config.image_size
    benign = load_dataset(config.benign, config.benign_split, image_size=size, channels=3,
                          limit=config.benign_limit, seed=config.seed)
    if size is None:
        size = benign.image_shape[0]
    attack = load_dataset(config.attack, config.attack_split, image_size=size, channels=3,
                          exclude_classes=config.exclude_classes, limit=config.attack_limit,
                          seed=config.seed)
    return benign, attack


def training_split(data: ImageDataset, role: str, holdout: float, seed: int,
                   jpeg_augment: float = 0.0) -> tuple[ImageDataset, ImageDataset]:
    """The seeded (fit, held-out) split `train_detector` makes of its `role` ("benign" or
    "attack") set; the held-out attack images are JPEG re-encoded as training's are, so the
    calibration (`detector.calibrate` too) sees exactly what training scored."""
    fit, held = _holdout_split(data, holdout, seed if role == "benign" else seed + 1)
    if role == "attack" and jpeg_augment > 0:
        held = with_images(held, jpeg_reencode(held.images, jpeg_augment, seed=seed + 4))
    return fit, held
