"""Fixtures for the victim_export tests: a tiny, learnable 16x16 RGB dataset of 3 classes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.victim_export.tiny_data import make_images


@pytest.fixture
def tiny_npz(tmp_path, monkeypatch):
    """A .npz with train/test splits and class names; the data cache goes to tmp_path."""
    monkeypatch.setenv("MEXT_CACHE_DIR", str(tmp_path / "cache"))
    x_train, y_train = make_images(96, seed=1)
    x_test, y_test = make_images(30, seed=2)
    path = tmp_path / "tiny_rgb.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array(["red", "green", "blue"]))
    return path
