"""The tiny "dominant colour" world of the defended benchmarks' end-to-end tests.

A 16x16 victim answers which colour channel dominates an image (3 classes) with soft
probabilities (its logits a few units apart, so a label-only answer is told from a softmax),
and an exported OOD detector calls bright images attack queries. The fixtures built from them
are in `conftest.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 16
CLASSES = ("red", "green", "blue")


def colour_images(n: int, seed: int, offset: int = 0) -> np.ndarray:
    """Images with one dominant channel each; `offset` brightens them all."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, size=(n, SIZE, SIZE, 3)).astype(np.int64) + offset
    dominant = rng.integers(0, 3, size=n)
    images[np.arange(n), :, :, dominant] += rng.integers(40, 130, size=(n, 1, 1))
    return np.clip(images, 0, 255).astype(np.uint8)


def colour_labels(images: np.ndarray) -> np.ndarray:
    """The dominant channel of each image: the victim's true class."""
    return np.argmax(images.reshape(len(images), -1, 3).mean(1), axis=1).astype(np.int64)


def colour_victim():
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Rescaling(1 / 40.0)(x)  # logits a few units apart: soft answers
    outputs = keras.layers.Dense(3, use_bias=False, kernel_initializer="identity")(x)
    return keras.Model(inputs, outputs)


def export_victim(base: Path) -> None:
    """`colour_victim` as `<base>/victims/colours/1`."""
    from victim_export import export_classifier

    export_classifier(colour_victim(), base / "victims", "colours", version=1,
                      input_shape=(SIZE, SIZE, 3), class_names=CLASSES)


def bright_detector(path: Path) -> Path:
    """Exported OOD detector: attack iff the mean pixel is above ~127."""
    import keras

    from detector.ood import export_detector

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Lambda(lambda t: keras.ops.mean(t, axis=-1, keepdims=True))(x)
    outputs = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant(
        [[-0.1, 0.1]]), bias_initializer=keras.initializers.Constant([12.7, -12.7]))(x)
    return export_detector(keras.Model(inputs, outputs), path,
                           {"threshold": 0.5, "target_fpr": 0.01, "benign_class": 0})
