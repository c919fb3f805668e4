"""What image-victim and dense-victim training share: the trained victim's record, the seeded
validation split, the optimizer a `VictimConfig` names and the resumable epoch order.

`victim_export.train` (image backbones) and `victim_export.dense` (softmax/logistic regression,
MLPs) both import these, so neither imports the other's module for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from common.data import ImageDataset
from common.errors import invalid
from victim_export.config import VictimConfig

__all__ = ["TrainedVictim", "epoch_callbacks", "epoch_stream", "optimizer_for",
           "split_validation"]


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


def epoch_stream(
    count: int,
    example: Callable[..., Any],
    *,
    seed: int,
    batch_size: int,
    first_epoch: int,
    epochs: int,
    seeded: bool = False,
) -> tf.data.Dataset:
    """The batches of epochs `first_epoch` .. `epochs` - 1 of `count` examples, one epoch after
    the other, each ending with its own partial batch: fit with ``steps_per_epoch=ceil(count /
    batch_size)`` and ``initial_epoch=first_epoch``.

    Epoch ``e`` visits the indices in a stateless shuffle keyed by ``(seed, e)`` and maps each
    through ``example(index)`` (or ``example(index, example_seed)`` when `seeded`: a per-example
    stateless seed ``[2]``, drawn from the same key, for augmentation). Nothing depends on how
    many epochs ran before in this process, so a run resumed at epoch ``e`` sees exactly the
    batches the uninterrupted run saw.
    """

    def batches(epoch: tf.Tensor) -> tf.data.Dataset:
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        order_key, example_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64),
                                                         seed=order_key)
        if seeded:
            seeds = tf.random.stateless_uniform((count, 2), seed=example_key, minval=None,
                                                maxval=None, dtype=tf.int64)
            ds = tf.data.Dataset.from_tensor_slices((order, seeds))
        else:
            ds = tf.data.Dataset.from_tensor_slices(order)
        return ds.map(example, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)

    stream = tf.data.Dataset.range(first_epoch, epochs).flat_map(batches)
    return stream.prefetch(tf.data.AUTOTUNE)


def epoch_callbacks(config: VictimConfig, validated: bool) -> tuple[
        list[keras.callbacks.Callback], keras.callbacks.EarlyStopping | None,
        keras.callbacks.ReduceLROnPlateau | None]:
    """(callbacks, early stopping, plateau) of `config`: early stopping on the validation
    accuracy (best weights restored; `patience` 0: never stops) when `validated`, and the
    reduce-on-plateau schedule of the validation loss (or the training loss) when
    `config.schedule` is plateau."""
    callbacks: list[keras.callbacks.Callback] = []
    early = plateau = None
    if validated:
        early = keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=config.patience or config.epochs,
            restore_best_weights=True)
        callbacks.append(early)
    if config.schedule == "plateau":
        plateau = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss" if validated else "loss", factor=0.2,
            patience=max(1, (config.patience or 4) // 2), min_lr=config.learning_rate * 1e-3)
        callbacks.append(plateau)
    return callbacks, early, plateau
