"""A fixed-size copy of each dataset of the full-scale study (Atli et al. 2020).

Atli et al. ("Extraction of Complex DNN Models: Real Threat or Boogeyman?", 2020) train ResNet-34
victims on Caltech256, CUBS200, CIFAR-10 and GTSRB, attack them with 100,000 ImageNet queries
(Knockoff Nets, Orekondy et al. 2019) and train their detector on those tasks and Diabetic5.
Where each dataset comes from (`DATASETS`, `resolve`, `check_available`) is the data layer's
(`common.data.presets`, re-exported here), and so is every read and download: this module only
reads each source through `common.data` (one download policy, ``MEXT_OFFLINE``) and writes it.

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
ImageNet's examples shuffled, so its first images are a random sample). Images are decoded and
resized (bilinear, antialiased) to a square by the data layer, so the copy holds the pixels
`common.data.load_dataset` gives at that size.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.constraints import check_int
from common.data import (
    ImageDataset,
    count_images,
    exclude_classes,
    load_dataset,
    prepare_dataset,
    sample_dataset,
)
from common.data.presets import (
    DATASETS,
    DatasetUnavailable,
    FullDataset,
    check_available,
    preset,
    resolve,
)
from common.errors import invalid
from common.fileio import write_json_atomic

__all__ = ["DATASETS", "DatasetUnavailable", "FullDataset", "PrepareConfig", "check_available",
           "main", "prepare", "resolve"]

log = logging.getLogger(__name__)


def _read(spec: str, split: str, size: int, channels: int) -> ImageDataset:
    """`split` of `spec` at `size` x `size` x `channels`, straight from its source (no cache)."""
    return load_dataset(spec, split, image_size=size, channels=channels, cache=False)


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
        ds = preset(self.dataset)
        if not str(self.out).endswith(".npz"):
            raise invalid("out", self.out, "a path ending in .npz")
        if not self.source.startswith("tfds:") and not Path(self.source).exists():
            raise invalid("source", self.source, "an existing file or folder, or tfds:NAME")
        if ds.samples is None and self.train_count is not None:
            raise invalid("train_count", self.train_count,
                          f"none for {ds.key} (only sampled datasets take a count)")
        if ds.samples is not None:
            check_int("train_count", self.train_count, min=1,
                      expected=f"a positive number of {ds.title} images for the train split")
        check_int("seed", self.seed)


def _sampled(config: PrepareConfig, ds: FullDataset) -> dict[str, ImageDataset]:
    val, test = ds.samples or (0, 0)
    counts = {"train": config.train_count or 0, "val": val, "test": test}
    total = sum(counts.values())
    if config.source.startswith("tfds:"):  # a folder too small is the data layer's error
        have = count_images(config.source, "train")
        if total > have:
            name = config.source.removeprefix("tfds:")
            raise invalid("train_count", config.train_count,
                          f"at most {have - val - test} ({name} has {have} train images, "
                          f"{val} + {test} of them go to val and test)")
    data = sample_dataset(config.source, "train", total, image_size=ds.size,
                          channels=ds.channels, seed=config.seed)
    out, start = {}, 0
    for split, count in counts.items():  # slices: views of the one array, no copies
        out[split] = ImageDataset(data.images[start:start + count],
                                  data.labels[start:start + count], data.class_names,
                                  f"{data.source}[{start}:{start + count}]")
        start += count
    return out


def _copied(config: PrepareConfig, ds: FullDataset) -> dict[str, ImageDataset]:
    available = prepare_dataset(config.source)

    def read(split: str) -> ImageDataset:
        data = _read(config.source, split, ds.size, ds.channels)
        return exclude_classes(data, ds.drop_classes, missing_ok=True)

    if ds.splits == ("test",):
        return {"test": read("test" if "test" in available else available[0])}
    train_name = "train" if "train" in available else "all" if "all" in available else None
    if train_name is None:
        raise invalid("source", config.source,
                      f"a dataset with a 'train' split (or no splits); found {list(available)}")
    train = read(train_name)
    if "test" in available:
        test = read("test")
    elif ds.test_per_class:
        mask = _hold_out(train.labels, ds.test_per_class, config.seed)
        train, test = train.subset(~mask), train.subset(mask)
    else:
        raise invalid("source", config.source, f"a test split for {ds.title}")
    if train.class_names != test.class_names:
        raise invalid("source", config.source, "the same classes in its train and test splits")
    if ds.test_limit and len(test.labels) > ds.test_limit:
        keep = np.random.default_rng([config.seed, 2]).permutation(len(test.labels))
        test = test.subset(np.sort(keep[:ds.test_limit]))
    return {"train": train, "test": test}


def prepare(config: PrepareConfig) -> dict[str, Any]:
    """Write `config.out` (and its .json summary) unless it exists; return the summary."""
    ds = preset(config.dataset)
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
