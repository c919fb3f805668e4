"""Dense victims: the logistic / softmax regressions and one-hidden-layer ReLU networks of the
exact extraction attacks.

Tramèr et al. 2016 ("Stealing Machine Learning Models via Prediction APIs") recover logistic and
multinomial logistic (softmax) regressions by solving equations; Jagielski et al. 2020 ("High
Accuracy and High Fidelity Extraction of Neural Networks") extract one-hidden-layer ReLU networks
exactly. Their victims are small dense models on flattened pixels, and this module builds them
beside the image backbones of `common.backbones`, in an explicit table:

* ``softmax``: multinomial logistic regression, logits ``W x + b`` (K outputs).
* ``logreg``: binary logistic regression, one score ``z = w x + b`` exported as the two logits
  ``[0, z]`` (so the probabilities are ``[1 - sigmoid(z), sigmoid(z)]``). On a dataset with more
  than two classes, ``--arch-args positive=N`` makes the task "class N against the rest".
* ``mlp``: ``A relu(W x + b) + c`` with ``--arch-args hidden=H`` units (default 16).

Unlike the image backbones, these take pixels scaled to [0, 1] (float, ``[H, W, C]``, any number
of channels: MNIST stays 28x28x1), flatten them inside the model, and are exported with a float
input (float64 by default: the exact attacks solve in float64, and TF Serving serves DT_DOUBLE).
`build_dense_classifier` builds one in any float dtype; `cast_dense_classifier` copies trained
weights into a float64 twin for export.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from common.constraints import check_int
from common.data import ImageDataset
from common.errors import UsageError, invalid
from common.progress import keras_verbose
from victim_export.dense_archs import (
    DENSE_ARCHS,
    DenseArch,
    check_dense_args,
    dense_arch,
    is_dense_arch,
)
from victim_export.fitting import (
    TrainedVictim,
    epoch_callbacks,
    epoch_stream,
    optimizer_for,
    split_validation,
)
from victim_export.training_state import TrainingState, fit_resumably

__all__ = [
    "DENSE_ARCHS",
    "BinaryLogits",
    "DenseArch",
    "build_dense_classifier",
    "cast_dense_classifier",
    "check_dense_args",
    "dense_arch",
    "is_dense_arch",
    "one_vs_rest",
    "train_dense_victim",
]

logger = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="mext")
class BinaryLogits(keras.layers.Layer):
    """``z [batch, 1] -> [0, z] [batch, 2]``: one logistic score as two softmax logits."""

    def call(self, inputs: Any) -> Any:
        return keras.ops.concatenate([keras.ops.zeros_like(inputs), inputs], axis=-1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (*input_shape[:-1], 2)


def build_dense_classifier(
    name: str,
    num_classes: int,
    input_shape: Sequence[int],
    *,
    dtype: str = "float32",
    hidden: int = 16,
    positive: int | None = None,
    seed: int | None = None,
) -> keras.Model:
    """A dense classifier: float pixels in [0, 1] of `input_shape` in, `num_classes` logits out.

    Every layer computes in `dtype` ("float32" to train, "float64" to serve exactly). `positive`
    is accepted (and ignored) so that `arch_args` pass through unchanged; `logreg` needs
    ``num_classes == 2``.
    """
    arch = dense_arch(name)
    del positive  # a data setting of logreg (see one_vs_rest), not a layer setting
    check_int("num_classes", num_classes, min=2, expected="an integer of at least 2")
    if arch.name == "logreg" and num_classes != 2:
        raise invalid("num_classes", num_classes,
                      "2 for logreg (pass --arch-args positive=N for class N against the rest)")
    shape = tuple(int(v) for v in input_shape)
    if not shape or min(shape) < 1:
        raise invalid("input_shape", tuple(input_shape), "positive dimensions")
    if dtype not in ("float16", "float32", "float64", "bfloat16"):
        raise invalid("dtype", dtype, "a float dtype name such as 'float32' or 'float64'")
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input(shape=shape, dtype=dtype, name="images")
    x = keras.layers.Flatten(name="flatten", dtype=dtype)(inputs) if len(shape) > 1 else inputs
    if arch.name == "mlp":
        x = keras.layers.Dense(int(hidden), activation="relu", kernel_initializer=init,
                               name="hidden", dtype=dtype)(x)
    if arch.name == "logreg":
        score = keras.layers.Dense(1, kernel_initializer=init, name="score", dtype=dtype)(x)
        logits = BinaryLogits(name="logits", dtype=dtype)(score)
    else:
        logits = keras.layers.Dense(int(num_classes), kernel_initializer=init, name="logits",
                                    dtype=dtype)(x)
    return keras.Model(inputs, logits, name=f"{arch.name}_classifier")


def _dense_kind(model: keras.Model) -> tuple[str, int]:
    names = {layer.name for layer in model.layers}
    if "score" in names:
        return "logreg", 1
    if "hidden" in names:
        return "mlp", int(model.get_layer("hidden").units)
    return "softmax", 0


def cast_dense_classifier(model: keras.Model, dtype: str) -> keras.Model:
    """A copy of a `build_dense_classifier` model computing in `dtype`, with the same weights."""
    kind, hidden = _dense_kind(model)
    num_classes = int(model.output_shape[-1])
    twin = build_dense_classifier(kind, num_classes, model.input_shape[1:], dtype=dtype,
                                  hidden=hidden or 16)
    twin.set_weights([np.asarray(w, dtype=dtype) for w in model.get_weights()])
    return twin


def one_vs_rest(dataset: ImageDataset, positive: int) -> ImageDataset:
    """`dataset` relabelled for "class `positive` against the rest" (0: rest, 1: positive)."""
    if positive >= dataset.num_classes:
        raise invalid("arch_args", f"positive={positive}",
                      f"a class index below {dataset.num_classes}")
    name = dataset.class_names[positive]
    labels = (np.asarray(dataset.labels) == positive).astype(np.int64)
    return ImageDataset(dataset.images, labels, (f"not_{name}", name),
                        dataset.source + f" ({name} vs rest)")


def _unit_pixels(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=np.float32) / np.float32(255.0)


def train_dense_victim(config: Any, train: ImageDataset, test: ImageDataset, *,
                       journal: Path | None = None, resume: TrainingState | None = None) -> Any:
    """Train the dense victim of `config` (a `VictimConfig`) on uint8 images scaled to [0, 1].

    Epoch ``e`` visits the images in an order drawn from ``(seed, e)``
    (`victim_export.fitting.epoch_stream`), so the training state journaled into `journal` after
    every epoch and continued from `resume` (`victim_export.training_state`) gives the
    uninterrupted run's weights, as for the image victims. Returns a
    `victim_export.fitting.TrainedVictim` whose model computes in float32.
    """
    kwargs = config.arch_kwargs
    check_dense_args(config.arch, kwargs)
    if config.arch == "logreg":
        positive = kwargs.get("positive")
        if positive is not None:
            train, test = one_vs_rest(train, positive), one_vs_rest(test, positive)
        elif train.num_classes != 2:
            raise invalid("arch_args", config.arch_args,
                          f"positive=N for logreg on {train.num_classes} classes (binary "
                          "logistic regression: class N against the rest)")
    if train.class_names != test.class_names:
        raise invalid("test_split", config.test_split,
                      f"a split with the training classes ({train.num_classes} classes)")
    if config.augment not in ("none", "crop+flip"):
        logger.warning("augment=%s is ignored by the dense architecture %s", config.augment,
                       config.arch)
    keras.utils.set_random_seed(config.seed)
    fit_set, val_set = split_validation(train, config.val_split, config.seed)
    shape = tuple(train.image_shape)
    model = build_dense_classifier(config.arch, train.num_classes, shape,
                                   hidden=kwargs.get("hidden", 16), seed=config.seed)
    logger.info("training %s on %d images (%d validation, %d test), %d classes, input %s",
                config.arch, len(fit_set), 0 if val_set is None else len(val_set), len(test),
                train.num_classes, "x".join(map(str, shape)))
    steps = math.ceil(len(fit_set) / config.batch_size)
    model.compile(
        optimizer=optimizer_for(config, steps),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                  label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )

    def arrays(ds: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
        return _unit_pixels(ds.images), keras.utils.to_categorical(ds.labels, train.num_classes)

    validation = None if val_set is None else arrays(val_set)
    callbacks, early, plateau = epoch_callbacks(config, val_set is not None)
    x_fit, y_fit = arrays(fit_set)

    def fit(first_epoch: int, callbacks: list[keras.callbacks.Callback]):
        x_source, y_source = tf.constant(x_fit), tf.constant(y_fit, tf.float32)
        stream = epoch_stream(
            len(x_fit), lambda i: (tf.gather(x_source, i), tf.gather(y_source, i)),
            seed=config.seed, batch_size=config.batch_size, first_epoch=first_epoch,
            epochs=config.epochs)
        return model.fit(stream, validation_data=validation, epochs=config.epochs,
                         steps_per_epoch=steps, initial_epoch=first_epoch, callbacks=callbacks,
                         shuffle=False, verbose=keras_verbose())

    history, seconds = fit_resumably(
        model, fit, config=config, journal=journal, resume=resume,
        size=shape[0], fit_set=fit_set, val_set=val_set, callbacks=callbacks, early=early,
        plateau=plateau)
    logits = model.predict(_unit_pixels(test.images), verbose=0, batch_size=1024)
    correct = np.argmax(logits, axis=-1) == np.asarray(test.labels)
    per_class: dict[str, float | None] = {}
    for index, name in enumerate(test.class_names):
        mask = np.asarray(test.labels) == index
        per_class[name] = float(correct[mask].mean()) if mask.any() else None
    accuracy = float(correct.mean()) if len(correct) else math.nan
    epochs_run = len(history.get("loss", ()))
    best_epoch = None if early is None or early.best_weights is None else early.best_epoch + 1
    logger.info("trained %d epochs in %.1fs; test accuracy %.4f", epochs_run, seconds, accuracy)
    if not np.isfinite(np.concatenate([np.ravel(w) for w in model.get_weights()])).all():
        raise UsageError(f"training {config.arch} diverged (non-finite weights); lower "
                         "--learning-rate")
    return TrainedVictim(
        model=model, class_names=train.class_names, input_size=int(shape[0]),
        test_accuracy=accuracy, per_class_accuracy=per_class, epochs_run=epochs_run,
        best_epoch=best_epoch, training_seconds=seconds,
        history={k: [float(v) for v in vals] for k, vals in history.items()},
        train_examples=len(fit_set), val_examples=0 if val_set is None else len(val_set),
        test_examples=len(test),
    )
