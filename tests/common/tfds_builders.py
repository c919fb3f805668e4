"""Local tensorflow-datasets builders for the data layer's tests: real builders, no network.

`local_builder` makes a `tfds.core.GeneratorBasedBuilder` whose splits are generated here, so a
test can prepare it (``download_and_prepare`` runs for real) and read it back through
`common.data` as a user's prepared dataset. Each class name is registered with tensorflow-datasets
once per process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

__all__ = ["local_builder"]

_MADE: dict[str, type] = {}


def local_builder(class_name: str, image: Any, class_names: list[str],
                  splits: dict[str, tuple[int, int]],
                  make_image: Callable[[int], np.ndarray]) -> type:
    """The builder named after `class_name` (``MextTinyTest`` -> ``mext_tiny_test``): splits
    ``{split: (first, count)}`` of examples ``i`` with image ``make_image(i)`` and label
    ``i % len(class_names)``; `image` is its ``tfds.features.Image``."""
    if class_name in _MADE:
        return _MADE[class_name]
    tfds = pytest.importorskip("tensorflow_datasets")
    # tfds imports it to prepare any dataset but does not declare it (tensorflow/datasets#11212)
    pytest.importorskip("importlib_resources")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": image, "label": tfds.features.ClassLabel(names=class_names)}),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {name: self._generate_examples(*span) for name, span in splits.items()}

    def _generate_examples(self, first, count):
        for i in range(first, first + count):
            yield i, {"image": make_image(i), "label": i % len(class_names)}

    _MADE[class_name] = type(class_name, (tfds.core.GeneratorBasedBuilder,), {
        "VERSION": tfds.core.Version("1.0.0"), "_info": _info,
        "_split_generators": _split_generators, "_generate_examples": _generate_examples})
    return _MADE[class_name]
