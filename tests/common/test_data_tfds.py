"""Tests for common.data's tensorflow-datasets source: the download policy (``MEXT_OFFLINE`` or
a probe; offline nothing is written and the error names the local copy to pass), prepared
datasets of fixed and varying image size, and their cache. The builders are local (no network)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import common.data as data
from common.data import imaging, load_dataset, split_names, tfds_source
from common.errors import UsageError
from tests.common.tfds_builders import local_builder


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """A fresh cache folder, and no network unless a test says so."""
    monkeypatch.setenv("MEXT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MEXT_OFFLINE", "1")


def _colour(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_tfds_offline_error_names_the_alternatives(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    data_dir = tmp_path / "tfds"
    for spec in ("cifar10", "tfds:cifar10"):
        with pytest.raises(UsageError, match=r"'cifar10' is not prepared in .*pass a local copy") \
                as caught:
            load_dataset(spec, data_dir=str(data_dir))
        assert "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="not prepared"):
        split_names("cifar10", data_dir=str(data_dir))
    assert not data_dir.exists()


def test_unknown_tfds_name(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(UsageError, match=r"`spec`.*registered tensorflow-datasets name"):
        load_dataset("no_such_dataset_xyz", data_dir=str(tmp_path))


def test_bad_offline_setting(monkeypatch):
    monkeypatch.setenv("MEXT_OFFLINE", "maybe")
    with pytest.raises(UsageError, match="`MEXT_OFFLINE`"):
        tfds_source.can_download()


def test_online_probe(monkeypatch):
    monkeypatch.delenv("MEXT_OFFLINE")

    def unreachable(address, timeout):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tfds_source.socket, "create_connection", unreachable)
    assert tfds_source.can_download() is False

    class Connection:
        def close(self):
            pass

    monkeypatch.setattr(tfds_source.socket, "create_connection",
                        lambda address, timeout: Connection())
    assert tfds_source.can_download() is True


def test_prepare_dataset_opens_a_path_and_never_downloads_offline(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    (tmp_path / "set" / "train" / "a").mkdir(parents=True)
    Image.fromarray(_colour(0)).save(tmp_path / "set" / "train" / "a" / "0.png")
    assert data.prepare_dataset(str(tmp_path / "set")) == ("train",)
    with pytest.raises(UsageError, match="not prepared in .* cannot download it; pass a local"):
        data.prepare_dataset("cifar10", data_dir=str(tmp_path / "tfds"))
    assert not (tmp_path / "tfds").exists()


@pytest.fixture(scope="module")
def tiny_tfds_builder():
    """A small builder of 8x8 images: 6 in train, 3 in test."""
    tfds = pytest.importorskip("tensorflow_datasets")
    return local_builder("MextTinyTest", tfds.features.Image(shape=(8, 8, 3)),
                          ["ant", "bee", "cow"], {"train": (0, 6), "test": (0, 3)}, _colour)


def test_tfds_online_prepares_then_loads_offline(tiny_tfds_builder, tmp_path, monkeypatch):
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(UsageError, match="not prepared"):
        load_dataset("tfds:mext_tiny_test", data_dir=data_dir)
    monkeypatch.setenv("MEXT_OFFLINE", "0")  # "online": download_and_prepare runs for real
    train = load_dataset("tfds:mext_tiny_test", data_dir=data_dir)
    assert train.class_names == ("ant", "bee", "cow")
    assert len(train) == 6 and train.image_shape == (8, 8, 3)
    assert sorted(train.class_counts().tolist()) == [2, 2, 2]
    monkeypatch.setenv("MEXT_OFFLINE", "1")  # prepared data needs no network
    both = load_dataset("mext_tiny_test", "train+test", data_dir=data_dir, image_size=4,
                        channels=1, exclude_classes=["ant"])
    assert len(both) == 6 and both.image_shape == (4, 4, 1) and both.class_names == ("bee", "cow")
    assert split_names("mext_tiny_test", data_dir=data_dir) == ("train", "test")
    with pytest.raises(UsageError, match=r"`split`.*'train', 'test'"):
        load_dataset("mext_tiny_test", "validation", data_dir=data_dir)


@pytest.fixture(scope="module")
def varsize_tfds_builder():
    """A builder whose images differ in size (as Imagenette's and Caltech-101's do),
    PNG-encoded so that the expected pixels can be computed exactly."""
    tfds = pytest.importorskip("tensorflow_datasets")
    return local_builder(
        "MextVarsizeTest", tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        ["n0001", "n0002", "n0003"], {"train": (0, 6), "validation": (6, 3)}, _varsize_image)


def _varsize_image(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (10 + 3 * i, 12 + i, 3), dtype=np.uint8)


def test_tfds_images_of_varying_size_are_decoded_to_the_size_asked(
    varsize_tfds_builder, tmp_path, monkeypatch
):
    data_dir = str(tmp_path / "tfds")
    assert data.can_download() is False  # MEXT_OFFLINE=1 (the fixture)
    with pytest.raises(UsageError, match="'mext_varsize_test' is not prepared"):
        load_dataset("tfds:mext_varsize_test", data_dir=data_dir, image_size=8)
    monkeypatch.setenv("MEXT_OFFLINE", "0")
    assert data.can_download() is True
    train = load_dataset("tfds:mext_varsize_test", data_dir=data_dir, image_size=8,
                         exclude_classes=["n0002"])
    assert train.class_names == ("n0001", "n0003") and train.image_shape == (8, 8, 3)
    # the same pixels an image folder of these PNGs gives (antialiased bilinear resize)
    wanted = {tuple(imaging.transform_one(_varsize_image(i), (8, 8), None).ravel()): i % 3
              for i in range(6) if i % 3 != 1}
    got = {tuple(image.ravel()): int(label) for image, label in zip(train.images, train.labels)}
    assert got == {k: (0 if v == 0 else 1) for k, v in wanted.items()}
    validation = load_dataset("tfds:mext_varsize_test", "validation", data_dir=data_dir,
                              image_size=(4, 6), channels=1)
    assert validation.images.shape == (3, 4, 6, 1)
    with pytest.raises(UsageError, match=r"`image_size`.*whose images differ in size"):
        load_dataset("tfds:mext_varsize_test", data_dir=data_dir)
    # decoded once: the same split, size and channels come from the cache, without tfds.load
    monkeypatch.setattr("tensorflow_datasets.load", lambda *a, **k: pytest.fail("decoded again"))
    again = load_dataset("tfds:mext_varsize_test", data_dir=data_dir, image_size=8,
                         exclude_classes=["n0002"])
    assert np.array_equal(again.images, train.images) and again.class_names == train.class_names
    with pytest.raises(pytest.fail.Exception, match="decoded again"):
        load_dataset("tfds:mext_varsize_test", data_dir=data_dir, image_size=8, cache=False)
