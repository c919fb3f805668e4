"""The datasets of the full-scale study (Atli et al. 2020): where each comes from, at which size.

Atli et al. ("Extraction of Complex DNN Models: Real Threat or Boogeyman?", 2020) train ResNet-34
victims on Caltech256, CUBS200, CIFAR-10 and GTSRB, attack them with 100,000 ImageNet queries
(Knockoff Nets, Orekondy et al. 2019) and train their detector on those tasks and Diabetic5.
`resolve` finds each dataset: the first of the preset's names that exists in a data folder (an
image folder or zip with a class per sub-folder, a Tiny-ImageNet folder, `.npz`/`.npy` arrays:
whatever `common.data` reads), else its tensorflow-datasets name; a dataset tensorflow-datasets
lacks (Caltech256, GTSRB) must be a local copy. `check_available` says in one line why a
tensorflow-datasets name cannot be had here (not installed, a manual download, offline), by the
data layer's one download policy (`common.data.tfds_source`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from common.data import tfds_source
from common.data.loader import split_names
from common.errors import UsageError, invalid

__all__ = ["DATASETS", "DatasetUnavailable", "FullDataset", "check_available", "preset",
           "resolve"]

_FOLDER_LAYOUT = "an image folder or .zip, [train|test/]<class>/<image>, or .npz arrays"


@dataclass(frozen=True)
class FullDataset:
    """One dataset of the study: where to find it and how its prepared copy looks."""

    key: str
    title: str
    local: tuple[str, ...]  # names tried in the data folder, in this order
    tfds: str | None  # tensorflow-datasets name (None: it has none)
    layout: str = _FOLDER_LAYOUT  # what a local copy is, for the messages
    manual: str | None = None  # tensorflow-datasets' manual download (None: it downloads)
    size: int = 224  # side of the prepared images
    channels: int = 3
    splits: tuple[str, ...] = ("train", "test")  # splits of the prepared copy
    test_per_class: int = 0  # a source without a test split: held-out images per class
    test_limit: int | None = None  # at most this many test images (a seeded subset)
    drop_classes: tuple[str, ...] = ()  # class names left out
    samples: tuple[int, int] | None = None  # sampled source: (val, test) images beside train


DATASETS = {d.key: d for d in (
    FullDataset("cifar10", "CIFAR-10", ("cifar10", "cifar10.zip", "cifar10.npz",
                                        "cifar10_jpeg_q75.zip"), "cifar10", size=32),
    FullDataset("gtsrb", "GTSRB", ("gtsrb", "gtsrb.zip", "gtsrb.npz", "gtsrb32_uint8_npy.tar.xz"),
                None, layout="train/<class>/<image> and test/<class>/<image>, or .npz/.tar arrays "
                             "(x_train, y_train, x_test, y_test)", size=32),
    # Knockoff Nets' split: 256 classes without the clutter class, 25 test images per class
    FullDataset("caltech256", "Caltech256", ("caltech256", "caltech256.zip", "caltech256.npz",
                                             "256_ObjectCategories", "256_ObjectCategories.zip"),
                None, layout="<class>/<image>, e.g. 256_ObjectCategories unpacked",
                test_per_class=25, drop_classes=("257.clutter",)),
    # tensorflow-datasets keeps the official split (5,994 / 5,794); a local folder without one
    # holds out as many per class
    FullDataset("cubs200", "CUBS200", ("cubs200", "cubs200.zip", "cubs200.npz", "CUB_200_2011",
                                       "CUB_200_2011.zip"), "caltech_birds2011",
                test_per_class=29),
    FullDataset("diabetic5", "Diabetic5", ("diabetic5", "diabetic5.zip", "diabetic5.npz"),
                "diabetic_retinopathy_detection/250K",
                manual="Kaggle's diabetic-retinopathy-detection files (train/, test/, "
                       "trainLabels.csv, retinopathy_solution.csv) unpacked",
                test_limit=10000),
    FullDataset("imagenet", "ImageNet", ("imagenet/train",), "imagenet2012",
                layout="a folder of <wnid>/<image> (ILSVRC2012 train unpacked)",
                manual="ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar",
                splits=("train", "val", "test"), samples=(20000, 10000)),
    FullDataset("mnist", "MNIST", ("mnist", "mnist.npz", "mnist_test10k_uint8.npz"), "mnist",
                size=28, channels=1, splits=("test",)),
)}
"""The study's datasets by key."""


class DatasetUnavailable(UsageError):
    """A dataset this machine cannot provide; `str(err)` is one line naming what to provide."""


def preset(key: str) -> FullDataset:
    """The dataset `key` of `DATASETS`, or a `UsageError` about the argument `dataset`."""
    if key not in DATASETS:
        raise invalid("dataset", key, "one of " + ", ".join(DATASETS))
    return DATASETS[key]


def resolve(key: str, data_dir: str | os.PathLike[str]) -> str:
    """The spec of dataset `key`: a local copy in `data_dir` if there is one, else ``tfds:NAME``.

    Raises `DatasetUnavailable` for a dataset tensorflow-datasets does not have and no local copy.
    """
    ds = preset(key)
    for name in ds.local:
        path = Path(data_dir) / name
        if path.exists():
            return str(path)
    if ds.tfds is None:
        raise DatasetUnavailable(
            f"{ds.title}: no local copy in {data_dir} and tensorflow-datasets has no {ds.title}; "
            f"provide the folder {Path(data_dir) / ds.local[0]} ({ds.layout})")
    return f"tfds:{ds.tfds}"


def check_available(key: str, spec: str, data_dir: str | os.PathLike[str]) -> None:
    """Raise `DatasetUnavailable` when the tensorflow-datasets `spec` cannot be had here.

    A local path, a prepared dataset or one tensorflow-datasets can download now passes; a manual
    download not done yet, a machine offline (``MEXT_OFFLINE``, see `common.data`) or no
    tensorflow-datasets package fails with one line that also names the local folder to provide.
    """
    ds = preset(key)
    if not spec.startswith("tfds:"):
        return
    name = spec.removeprefix("tfds:")
    missing = f"{ds.title}: no local copy in {data_dir} (e.g. {Path(data_dir) / ds.local[0]})"
    try:
        tfds_source.import_tfds()
    except UsageError:
        raise DatasetUnavailable(f"{missing} and tensorflow-datasets is not installed "
                                 "(pip install tensorflow-datasets)") from None
    absl = logging.getLogger("absl")  # tfds warns about each variant folder it does not find
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        if tfds_source.builder(name, None).is_prepared():
            return
        if ds.manual:
            raise DatasetUnavailable(
                f"{missing} and tensorflow-datasets {name!r} needs a manual download: put "
                f"{ds.manual} in {tfds_source.root(None)}/downloads/manual/")
        split_names(spec)  # offline, not prepared: a UsageError
    except DatasetUnavailable:
        raise
    except UsageError as err:
        reason = str(err).split(";")[0]
        raise DatasetUnavailable(f"{missing} and tensorflow-datasets: {reason}") from None
    finally:
        absl.setLevel(level)
