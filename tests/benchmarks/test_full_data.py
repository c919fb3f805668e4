"""`benchmarks.full_data`: the full-scale study's datasets written once at their victims' size."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import full_data
from common.data import load_dataset
from common.errors import UsageError
from tests.common.tfds_builders import local_builder


def _folder(root, classes, per_class, sizes=((40, 30), (25, 50))):
    """`root/<class>/<i>.png`, each image one solid colour that encodes (class, i)."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            Image.new("RGB", (w, h), (10 * c, 10 * i, 7)).save(root / name / f"{i}.png")
    return root


def _small(monkeypatch, key, **changes):
    monkeypatch.setitem(full_data.DATASETS, key,
                        dataclasses.replace(full_data.DATASETS[key], **changes))


def test_a_folder_without_a_test_split_holds_out_images_per_class(tmp_path, monkeypatch):
    _small(monkeypatch, "caltech256", size=16, test_per_class=2)
    source = _folder(tmp_path / "256_ObjectCategories", ["001.ak47", "002.bat", "257.clutter"], 5)
    out = tmp_path / "out" / "caltech256.npz"
    summary = full_data.prepare(full_data.PrepareConfig("caltech256", str(source), str(out)))
    assert summary["splits"] == {"train": 6, "test": 4} and summary["classes"] == 2
    train, test = load_dataset(str(out), "train"), load_dataset(str(out), "test")
    assert train.class_names == test.class_names == ("001.ak47", "002.bat")  # no clutter
    assert train.image_shape == (16, 16, 3) and list(test.class_counts()) == [2, 2]
    colours = {tuple(img[8, 8]) for img in np.concatenate([train.images, test.images])}
    assert len(colours) == 10  # every image once, none in both splits
    assert json.loads(out.with_suffix(".json").read_text()) == summary


def test_imagenet_is_sampled_into_disjoint_splits_before_decoding(tmp_path, monkeypatch):
    _small(monkeypatch, "imagenet", size=8, samples=(3, 2))
    source = _folder(tmp_path / "imagenet" / "train", ["n01", "n02", "n03"], 6)
    out = tmp_path / "imagenet.npz"
    config = full_data.PrepareConfig("imagenet", str(source), str(out), train_count=7, seed=1)
    assert full_data.prepare(config)["splits"] == {"train": 7, "val": 3, "test": 2}
    seen = [tuple(img[4, 4]) for split in ("train", "val", "test")
            for img in load_dataset(str(out), split).images]
    assert len(seen) == len(set(seen)) == 12
    assert load_dataset(str(out), "val").class_names == ("n01", "n02", "n03")
    with pytest.raises(UsageError, match="at least 19 images"):
        full_data.prepare(dataclasses.replace(config, out=str(tmp_path / "b.npz"),
                                              train_count=14))


def test_a_prepared_copy_is_not_written_again(tmp_path, monkeypatch):
    _small(monkeypatch, "caltech256", size=8, test_per_class=1)
    source = _folder(tmp_path / "caltech256", ["a", "b"], 3)
    config = full_data.PrepareConfig("caltech256", str(source), str(tmp_path / "c.npz"))
    first = full_data.prepare(config)
    stamp = (tmp_path / "c.npz").stat().st_mtime_ns
    assert full_data.prepare(config) == first
    assert (tmp_path / "c.npz").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("argv, argument", [
    (["--dataset", "svhn", "--source", "tfds:svhn_cropped", "--out", "x.npz"], "dataset"),
    (["--dataset", "cifar10", "--source", "tfds:cifar10", "--out", "x.zip"], "out"),
    (["--dataset", "cifar10", "--source", "/no/such/folder", "--out", "x.npz"], "source"),
    (["--dataset", "cifar10", "--source", "tfds:cifar10", "--out", "x.npz",
      "--train-count", "5"], "train_count"),
    (["--dataset", "imagenet", "--source", "tfds:imagenet2012", "--out", "x.npz"],
     "train_count"),
])
def test_bad_arguments_exit_2_with_one_line(argv, argument, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert full_data.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    flag = "--" + argument.replace("_", "-")  # the flag typed (issue 17)
    assert len(err) == 1 and f"`{flag}`" in err[0]
    assert not (tmp_path / "x.npz").exists()


def _tiny_shape(i):
    return np.full((10 + i % 7, 12 + i % 5, 3), i % 250, np.uint8)


@pytest.fixture
def tiny_tfds(tmp_path, monkeypatch):
    """The tiny dataset prepared in an empty tensorflow-datasets folder of its own."""
    tfds = pytest.importorskip("tensorflow_datasets")
    name = local_builder("TinyShapes", tfds.features.Image(shape=(None, None, 3)),
                         ["disc", "square", "star"], {"train": (0, 21), "test": (100, 9)},
                         _tiny_shape).name
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    tfds.builder(name, data_dir=str(tmp_path / "tfds")).download_and_prepare()
    return name


def test_a_tfds_dataset_is_copied_with_its_own_splits(tmp_path, monkeypatch, tiny_tfds):
    _small(monkeypatch, "cubs200", size=8)
    out = tmp_path / "cubs200.npz"
    summary = full_data.prepare(full_data.PrepareConfig("cubs200", f"tfds:{tiny_tfds}", str(out)))
    assert summary["splits"] == {"train": 21, "test": 9}
    test = load_dataset(str(out), "test")
    assert test.image_shape == (8, 8, 3) and test.class_names == ("disc", "square", "star")
    assert sorted(int(img[4, 4, 0]) for img in test.images) == list(range(100, 109))
    full_data.check_available("cubs200", f"tfds:{tiny_tfds}", tmp_path)  # prepared: available


def test_imagenet_from_tfds_takes_the_first_images_of_its_train_split(
        tmp_path, monkeypatch, tiny_tfds):
    _small(monkeypatch, "imagenet", size=6, samples=(4, 3))
    out = tmp_path / "imagenet.npz"
    config = full_data.PrepareConfig("imagenet", f"tfds:{tiny_tfds}", str(out), train_count=10)
    assert full_data.prepare(config)["splits"] == {"train": 10, "val": 4, "test": 3}
    seen = [int(img[3, 3, 0]) for split in ("train", "val", "test")
            for img in load_dataset(str(out), split).images]
    assert len(set(seen)) == 17 and max(seen) < 21
    with pytest.raises(UsageError, match="train_count"):
        full_data.prepare(dataclasses.replace(config, out=str(tmp_path / "b.npz"),
                                              train_count=15))


def test_tfds_images_of_any_size_become_grey_at_the_victims_size(tmp_path, monkeypatch, tiny_tfds):
    _small(monkeypatch, "mnist", size=6)  # a copy of the test split only, one channel
    out = tmp_path / "mnist.npz"
    summary = full_data.prepare(full_data.PrepareConfig("mnist", f"tfds:{tiny_tfds}", str(out)))
    assert summary["splits"] == {"test": 9} and summary["image_shape"] == [6, 6, 1]
    test = load_dataset(str(out), "test")
    assert test.image_shape == (6, 6, 1)
    # solid grey images stay that grey (ITU-R 601 luma of (v, v, v) is v), each with its label
    pairs = sorted((int(img[3, 3, 0]), int(label)) for img, label in zip(test.images, test.labels))
    assert pairs == [(i, i % 3) for i in range(100, 109)]
