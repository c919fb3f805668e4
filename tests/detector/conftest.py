"""Shared data of the detector tests: tiny 16x16 'benign' (dark, noisy) and 'attack' (bright,
flat) images a two-epoch CNN separates, the tiny CNN's arguments, and writers of `.npz` datasets
in `common.data`'s layout. Imported by the test modules (``from tests.detector.conftest
import ...``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data import ImageDataset

SIDE = 16
TINY_CNN = ("filters=[8,16]", "block_dropout=[0,0]", "dense_units=16", "dense_dropout=0")


def benign_images(n: int, seed: int) -> np.ndarray:
    """The 'victim's distribution': dark, noisy images."""
    return np.random.default_rng(seed).integers(0, 90, (n, SIDE, SIDE, 3)).astype(np.uint8)


def attack_images(n: int, seed: int) -> np.ndarray:
    """'Natural images outside the task': bright, flat colour patches with a little noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(120, 255, (n, 1, 1, 3))
    return np.clip(base + rng.integers(-10, 10, (n, SIDE, SIDE, 3)), 0, 255).astype(np.uint8)


def as_dataset(images: np.ndarray, name: str) -> ImageDataset:
    return ImageDataset(images, np.zeros(len(images), np.int64), (name,), name)


def write_npz(path: Path, train: np.ndarray, test: np.ndarray, classes: int = 1) -> Path:
    """An `.npz` dataset (x/y train/test) whose labels cycle through `classes` classes."""
    np.savez(path, x_train=train, y_train=np.arange(len(train)) % classes,
             x_test=test, y_test=np.arange(len(test)) % classes)
    return path
