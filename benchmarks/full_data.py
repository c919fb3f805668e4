"""The datasets of the full-scale study (Atli et al. 2020): where each comes from, and a copy.

Atli et al. ("Extraction of Complex DNN Models: Real Threat or Boogeyman?", 2020) train ResNet-34
victims on Caltech256, CUBS200, CIFAR-10 and GTSRB, attack them with 100,000 ImageNet queries
(Knockoff Nets, Orekondy et al. 2019) and train their detector on those tasks and Diabetic5.
`resolve` finds each dataset: the first of the registry's names that exists in `--data-dir` (an
image folder or zip with a class per sub-folder, a Tiny-ImageNet folder, `.npz`/`.npy` arrays:
whatever `common.data` reads), else its tensorflow-datasets name; a dataset tensorflow-datasets
lacks (Caltech256, GTSRB) must be a local copy. `check_available` says in one line why a
tensorflow-datasets name cannot be had here (not installed, a manual download, offline).

`python -m benchmarks.full_data` then writes one `.npz` per dataset at the size its victim takes
(`x_<split>`/`y_<split>` uint8, `class_names`), so that the victim, the attacks' test sets and
the detector read the same images and the same test split, and images of varying size (CUBS200,
Caltech256, ImageNet) become fixed-size arrays:

    python -m benchmarks.full_data --dataset cubs200 --source tfds:caltech_birds2011 \\
        --out results/full/data_cubs200/cubs200.npz

A source without a test split (a Caltech256 folder) gives its test split per class (Knockoff
Nets: 25 images per class). ImageNet is sampled, not copied: `--train-count` images from its
train split (the attacker's pool of queries) and two disjoint sets for the detector (`val` to
train it, `test` to evaluate it), chosen before any image is decoded (tensorflow-datasets keeps
ImageNet's examples shuffled, so its first images are a random sample). Images are resized
(bilinear, antialiased) to a square, as the data layer does.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UsageError, invalid
from common.fileio import write_json_atomic

__all__ = ["DATASETS", "DatasetUnavailable", "FullDataset", "PrepareConfig", "check_available",
           "main", "prepare", "resolve"]

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
_FOLDER_LAYOUT = "an image folder or .zip, [train|test/]<class>/<image>, or .npz arrays"


@dataclass(frozen=True)
class FullDataset:
    """One dataset of the study: where to find it and how its prepared copy looks."""

    key: str
    title: str
    local: tuple[str, ...]  # names tried in --data-dir, in this order
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


class DatasetUnavailable(UsageError):
    """A dataset this machine cannot provide; `str(err)` is one line naming what to provide."""


def _dataset(key: str) -> FullDataset:
    if key not in DATASETS:
        raise invalid("dataset", key, "one of " + ", ".join(DATASETS))
    return DATASETS[key]


def resolve(key: str, data_dir: str | os.PathLike[str]) -> str:
    """The spec of dataset `key`: a local copy in `data_dir` if there is one, else ``tfds:NAME``.

    Raises `DatasetUnavailable` for a dataset tensorflow-datasets does not have and no local copy.
    """
    ds = _dataset(key)
    for name in ds.local:
        path = Path(data_dir) / name
        if path.exists():
            return str(path)
    if ds.tfds is None:
        raise DatasetUnavailable(
            f"{ds.title}: no local copy in {data_dir} and tensorflow-datasets has no {ds.title}; "
            f"provide the folder {Path(data_dir) / ds.local[0]} ({ds.layout})")
    return f"tfds:{ds.tfds}"


def _tfds_dir() -> str | None:
    """tensorflow-datasets' data folder, read now (tfds itself reads it once, at import)."""
    return os.environ.get("TFDS_DATA_DIR") or None


def _tfds_root() -> str:
    return _tfds_dir() or "~/tensorflow_datasets"


def check_available(key: str, spec: str, data_dir: str | os.PathLike[str]) -> None:
    """Raise `DatasetUnavailable` when the tensorflow-datasets `spec` cannot be had here.

    A local path, a prepared dataset or one tensorflow-datasets can download now passes; a manual
    download not done yet, a machine offline (``MEXT_OFFLINE``, see `common.data`) or no
    tensorflow-datasets package fails with one line that also names the local folder to provide.
    """
    ds = _dataset(key)
    if not spec.startswith("tfds:"):
        return
    name = spec.removeprefix("tfds:")
    missing = f"{ds.title}: no local copy in {data_dir} (e.g. {Path(data_dir) / ds.local[0]})"
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DatasetUnavailable(f"{missing} and tensorflow-datasets is not installed "
                                 "(pip install tensorflow-datasets)") from None
    from common.data import split_names

    absl = logging.getLogger("absl")  # tfds warns about each variant folder it does not find
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        if tfds.builder(name, data_dir=_tfds_dir()).is_prepared():
            return
        if ds.manual:
            raise DatasetUnavailable(
                f"{missing} and tensorflow-datasets {name!r} needs a manual download: put "
                f"{ds.manual} in {_tfds_root()}/downloads/manual/")
        split_names(spec, data_dir=_tfds_dir())  # offline, not prepared: a UsageError
    except DatasetUnavailable:
        raise
    except UsageError as err:
        reason = str(err).split(";")[0]
        raise DatasetUnavailable(f"{missing} and tensorflow-datasets: {reason}") from None
    finally:
        absl.setLevel(level)


# -- reading a source at a fixed size --------------------------------------------------------------
@dataclass
class _Images:
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]


def _tfds_builder(name: str) -> Any:
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=_tfds_dir())
    if not builder.is_prepared():
        log.info("downloading and preparing %s in %s", name, _tfds_root())
        try:
            builder.download_and_prepare()
        except Exception as err:  # network, manual files, checksums: all end the same way
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise UsageError(f"cannot prepare tensorflow-datasets {name!r} in {_tfds_root()} "
                             f"({type(err).__name__}: {first})") from err
    return builder


def _read_tfds(name: str, split: str, size: int, channels: int) -> _Images:
    """`split` of tensorflow-datasets `name` (slices such as ``train[:1000]`` too), streamed and
    resized on tf.data's threads, so the full-size images are never all in memory."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name)
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    feature = builder.info.features[image_key]
    same = tuple(feature.shape) == (size, size, channels)

    def to_size(example: dict) -> tuple[Any, Any]:
        image = example[image_key]
        if image.shape[-1] != channels:
            image = (tf.image.rgb_to_grayscale(image) if channels == 1
                     else tf.image.grayscale_to_rgb(image))
        if not same:
            image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return image, example[label_key]

    try:
        expected = int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError):
        expected = 0
    data = builder.as_dataset(split=split, shuffle_files=False)
    data = data.map(to_size, num_parallel_calls=tf.data.AUTOTUNE).batch(256)
    images = np.empty((expected, size, size, channels), np.uint8)  # filled in place: no copy
    labels = np.empty(expected, np.int64)
    extra: list[tuple[np.ndarray, np.ndarray]] = []  # beyond the expected count
    done = 0
    for x, y in tfds.as_numpy(data.prefetch(tf.data.AUTOTUNE)):
        fit = max(0, min(len(x), expected - done))
        images[done:done + fit], labels[done:done + fit] = x[:fit], y[:fit]
        if fit < len(x):
            extra.append((x[fit:], y[fit:]))
        done += len(x)
    if extra:
        images = np.concatenate([images, *(x for x, _ in extra)])
        labels = np.concatenate([labels, *(y for _, y in extra)])
    elif done < expected:
        images, labels = images[:done], labels[:done]
    return _Images(images, labels, tuple(builder.info.features[label_key].names))


def _decode(path: Path, size: int, channels: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB" if channels == 3 else "L", (size, size))  # JPEG: decode smaller
        image = image.convert("RGB" if channels == 3 else "L")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    return array if channels == 3 else array[..., np.newaxis]


def _sample_folder(root: Path, count: int, size: int, channels: int, seed: int) -> _Images:
    """`count` images of the folder `root/<class>/<image>` in a seeded random order, decoded
    after they are chosen (ImageNet's 1.28 million never all decoded)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[int, Path]] = []
    for index, name in enumerate(classes):
        files += [(index, p) for p in sorted((root / name).iterdir())
                  if p.suffix.lower() in _IMAGE_SUFFIXES]
    if count > len(files):
        raise invalid("source", str(root), f"a folder of at least {count} images in class "
                                           f"sub-folders (found {len(files)})")
    chosen = np.random.default_rng(seed).permutation(len(files))[:count]
    images = np.empty((count, size, size, channels), np.uint8)

    def fill(position: int) -> None:
        images[position] = _decode(files[chosen[position]][1], size, channels)

    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(fill, range(count)))
    labels = np.array([files[i][0] for i in chosen], np.int64)
    return _Images(images, labels, tuple(classes))


def _read_local(spec: str, split: str, size: int, channels: int) -> _Images:
    from common.data import load_dataset

    data = load_dataset(spec, split, image_size=size, channels=channels, cache=False)
    return _Images(data.images, data.labels, data.class_names)


def _source_splits(spec: str) -> tuple[str, ...]:
    from common.data import split_names

    if spec.startswith("tfds:"):
        return tuple(_tfds_builder(spec.removeprefix("tfds:")).info.splits)
    return split_names(spec)


def _read(spec: str, split: str, size: int, channels: int) -> _Images:
    if spec.startswith("tfds:"):
        return _read_tfds(spec.removeprefix("tfds:"), split, size, channels)
    return _read_local(spec, split, size, channels)


def _take(data: _Images, index: np.ndarray) -> _Images:
    return _Images(data.images[index], data.labels[index], data.class_names)


def _drop(data: _Images, names: Iterable[str]) -> _Images:
    """`data` without the classes `names` (those it has), labels re-indexed."""
    drop = set(names) & set(data.class_names)
    if not drop:
        return data
    keep = [i for i, name in enumerate(data.class_names) if name not in drop]
    remap = np.full(len(data.class_names), -1, np.int64)
    remap[keep] = np.arange(len(keep))
    mask = remap[data.labels] >= 0
    return _Images(data.images[mask], remap[data.labels[mask]],
                   tuple(data.class_names[i] for i in keep))


def _hold_out(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """A boolean mask of `per_class` seeded images of each class (fewer if a class is smaller,
    always leaving one to train on)."""
    rng = np.random.default_rng([seed, 1])
    mask = np.zeros(len(labels), bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        mask[rng.permutation(members)[:min(per_class, len(members) - 1)]] = True
    return mask


# -- the prepared copy -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PrepareConfig:
    """Write one dataset of the full-scale study as a fixed-size .npz (see the module docstring)."""

    dataset: str = field(metadata={"help": "the dataset: " + ", ".join(DATASETS)})
    source: str = field(metadata={
        "help": "where to read it: a local copy (folder, .zip, .npz, ...) or tfds:NAME",
        "metavar": "SPEC"})
    out: str = field(metadata={"help": "the .npz to write (its summary goes beside it as .json)",
                               "metavar": "FILE"})
    train_count: int | None = field(default=None, metadata={
        "help": "sampled datasets (imagenet): images of the train split, the attacker's pool "
                "(budget + held-out)", "metavar": "N"})
    seed: int = field(default=0, metadata={"help": "seed of the samples and held-out splits"})

    def __post_init__(self) -> None:
        ds = _dataset(self.dataset)
        if not str(self.out).endswith(".npz"):
            raise invalid("out", self.out, "a path ending in .npz")
        if not self.source.startswith("tfds:") and not Path(self.source).exists():
            raise invalid("source", self.source, "an existing file or folder, or tfds:NAME")
        if ds.samples is None and self.train_count is not None:
            raise invalid("train_count", self.train_count,
                          f"none for {ds.key} (only sampled datasets take a count)")
        if ds.samples is not None and (isinstance(self.train_count, bool)
                                       or not isinstance(self.train_count, int)
                                       or self.train_count < 1):
            raise invalid("train_count", self.train_count,
                          f"a positive number of {ds.title} images for the train split")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise invalid("seed", self.seed, "an integer")


def _sampled(config: PrepareConfig, ds: FullDataset) -> dict[str, _Images]:
    val, test = ds.samples or (0, 0)
    counts = {"train": config.train_count or 0, "val": val, "test": test}
    total = sum(counts.values())
    if config.source.startswith("tfds:"):
        name = config.source.removeprefix("tfds:")
        have = _tfds_builder(name).info.splits["train"].num_examples
        if total > have:
            raise invalid("train_count", config.train_count,
                          f"at most {have - val - test} ({name} has {have} train images, "
                          f"{val} + {test} of them go to val and test)")
        data = _read(config.source, f"train[:{total}]", ds.size, ds.channels)
    else:
        data = _sample_folder(Path(config.source), total, ds.size, ds.channels, config.seed)
    out, start = {}, 0
    for split, count in counts.items():  # slices: views of the one array, no copies
        out[split] = _Images(data.images[start:start + count], data.labels[start:start + count],
                             data.class_names)
        start += count
    return out


def _copied(config: PrepareConfig, ds: FullDataset) -> dict[str, _Images]:
    available = _source_splits(config.source)
    if ds.splits == ("test",):
        name = "test" if "test" in available else available[0]
        return {"test": _drop(_read(config.source, name, ds.size, ds.channels), ds.drop_classes)}
    train_name = "train" if "train" in available else "all" if "all" in available else None
    if train_name is None:
        raise invalid("source", config.source,
                      f"a dataset with a 'train' split (or no splits); found {list(available)}")
    train = _drop(_read(config.source, train_name, ds.size, ds.channels), ds.drop_classes)
    if "test" in available:
        test = _drop(_read(config.source, "test", ds.size, ds.channels), ds.drop_classes)
    elif ds.test_per_class:
        mask = _hold_out(train.labels, ds.test_per_class, config.seed)
        train, test = _take(train, np.flatnonzero(~mask)), _take(train, np.flatnonzero(mask))
    else:
        raise invalid("source", config.source, f"a test split for {ds.title}")
    if train.class_names != test.class_names:
        raise invalid("source", config.source, "the same classes in its train and test splits")
    if ds.test_limit and len(test.labels) > ds.test_limit:
        keep = np.random.default_rng([config.seed, 2]).permutation(len(test.labels))
        test = _take(test, np.sort(keep[:ds.test_limit]))
    return {"train": train, "test": test}


def prepare(config: PrepareConfig) -> dict[str, Any]:
    """Write `config.out` (and its .json summary) unless it exists; return the summary."""
    ds = _dataset(config.dataset)
    out = Path(config.out)
    summary_file = out.with_suffix(".json")
    if out.is_file() and summary_file.is_file():
        log.info("%s is prepared already", out)
        return json.loads(summary_file.read_text())
    started = time.time()
    splits = _sampled(config, ds) if ds.samples else _copied(config, ds)
    names = splits[ds.splits[0]].class_names
    arrays: dict[str, np.ndarray] = {"class_names": np.asarray(names, dtype=str)}
    for split, data in splits.items():
        arrays[f"x_{split}"], arrays[f"y_{split}"] = data.images, data.labels
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(out.stem + ".tmp.npz")
    np.savez(temp, **arrays)
    os.replace(temp, out)
    summary = {"dataset": ds.key, "title": ds.title, "source": config.source,
               "image_shape": [ds.size, ds.size, ds.channels], "classes": len(names),
               "splits": {split: int(len(data.labels)) for split, data in splits.items()},
               "seed": config.seed, "seconds": round(time.time() - started, 1)}
    write_json_atomic(summary_file, summary)
    return summary


PROG = "python -m benchmarks.full_data"


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare one dataset; a bad argument or an unavailable dataset is one line, exit code 2."""
    from common.cli import configure_logging, parse_config, run_cli

    def body(args: Sequence[str] | None) -> int:
        config = parse_config(PrepareConfig, args, prog=PROG,
                              description=__doc__.split("\n\n")[0])
        configure_logging()
        summary = prepare(config)
        counts = ", ".join(f"{split} {n}" for split, n in summary["splits"].items())
        print(f"{config.out}: {summary['title']}, {summary['classes']} classes, {counts} "
              f"images at {'x'.join(map(str, summary['image_shape']))}")
        return 0

    return run_cli(body, argv, prog=PROG)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
