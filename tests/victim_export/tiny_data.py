"""Tiny, learnable 16x16 RGB images of 3 classes for the victim_export tests."""

from __future__ import annotations

import numpy as np


def make_images(count: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Class c images are bright in colour channel c: easy to learn in one epoch."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count)
    images = rng.integers(0, 70, (count, size, size, 3)).astype(np.uint8)
    for c in range(3):
        images[labels == c, :, :, c] += 160
    return images, labels.astype(np.int64)
