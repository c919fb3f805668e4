"""What image-victim and dense-victim training share: the trained victim's record, the seeded
validation split and the optimizer a `VictimConfig` names.

`victim_export.train` (image backbones) and `victim_export.dense` (softmax/logistic regression,
MLPs) both import these, so neither imports the other's module for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from common.data import ImageDataset
from common.errors import invalid
from victim_export.config import VictimConfig

__all__ = ["TrainedVictim", "optimizer_for", "split_validation"]


@dataclass(frozen=True)
class TrainedVictim:
    """A trained victim and what its card reports about it."""

    model: keras.Model
    class_names: tuple[str, ...]
    input_size: int
    test_accuracy: float
    per_class_accuracy: dict[str, float | None]
    epochs_run: int
    best_epoch: int | None
    training_seconds: float
    history: dict[str, list[float]]
    train_examples: int
    val_examples: int
    test_examples: int


def split_validation(
    dataset: ImageDataset, fraction: float, seed: int
) -> tuple[ImageDataset, ImageDataset | None]:
    """(fit, validation): a seeded `fraction` of `dataset` held out for validation (none at 0)."""
    if fraction <= 0:
        return dataset, None
    return split_off(dataset, fraction, seed, "val_split", "validation")


def split_off(dataset: ImageDataset, fraction: float, seed: int, argument: str,
              what: str) -> tuple[ImageDataset, ImageDataset]:
    """(rest, held out): a seeded `fraction` of `dataset` held out as the `what` images;
    `argument` is named when a side would be empty."""
    count = int(round(len(dataset) * fraction))
    if count < 1 or count >= len(dataset):
        raise invalid(argument, fraction,
                      f"a fraction leaving at least one training and one {what} image of "
                      f"{len(dataset)}")
    order = np.random.default_rng(seed).permutation(len(dataset))
    return dataset.subset(np.sort(order[count:])), dataset.subset(np.sort(order[:count]))


def optimizer_for(config: VictimConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The config's optimizer (adam, adamw or SGD with Nesterov momentum), cosine-decayed over
    the whole run when `config.schedule` is cosine."""
    rate: Any = config.learning_rate
    if config.schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=max(1, config.epochs * steps_per_epoch)
        )
    decay = config.weight_decay or None
    if config.optimizer == "adam":
        return keras.optimizers.Adam(rate, weight_decay=decay)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True, weight_decay=decay)
