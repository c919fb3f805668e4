"""A tiny victim that the attacks can steal, served in-process by the embedded server.

The victim answers "which colour channel dominates the image" (3 classes) with a softmax over
the channel means: a function a small surrogate learns from a few hundred queries, so the
end-to-end tests can ask for agreement well above chance (1/3) in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

SIZE = 16
CLASSES = ("red", "green", "blue")


def colour_victim():
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Rescaling(1 / 8.0)(x)  # channel means 0..255 -> logits 0..32
    outputs = keras.layers.Dense(3, use_bias=False, kernel_initializer="identity")(x)
    return keras.Model(inputs, outputs)


def colour_images(n: int, seed: int) -> np.ndarray:
    """Images with one dominant channel each (random which), noisy, uint8."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, size=(n, SIZE, SIZE, 3)).astype(np.int64)
    dominant = rng.integers(0, 3, size=n)
    images[np.arange(n), :, :, dominant] += rng.integers(40, 130, size=(n, 1, 1))
    return np.clip(images, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def victim_dir(tmp_path_factory):
    from victim_export import export_classifier, write_models_config

    base = tmp_path_factory.mktemp("victims")
    export_classifier(colour_victim(), base, "colours", version=1, input_shape=(SIZE, SIZE, 3),
                      class_names=CLASSES)
    write_models_config(base, "colours", container_base_path="")
    return base


@pytest.fixture(scope="session")
def data_files(tmp_path_factory):
    """A transfer set (unlabelled natural-ish images) and a labelled test set, as .npz files."""
    import keras

    base = tmp_path_factory.mktemp("data")
    transfer = colour_images(600, seed=1)
    test = colour_images(300, seed=2)
    logits = colour_victim()(test.astype(np.float32))
    labels = np.asarray(keras.ops.argmax(logits, axis=-1))
    np.savez(base / "transfer.npz", x_train=transfer, y_train=np.zeros(len(transfer), np.int64))
    np.savez(base / "test.npz", x_test=test, y_test=labels.astype(np.int64))
    return base / "transfer.npz", base / "test.npz"


@pytest.fixture()
def served_victim(victim_dir):
    """The embedded server over the colour victim on 127.0.0.1 (a fresh one per test)."""
    from serving.model_server import ModelServer, ServerOptions

    options = ServerOptions(model_config_file=str(victim_dir / "models.config"), port=0,
                            host="127.0.0.1", file_system_poll_wait_seconds=0)
    with ModelServer(options) as server:
        yield f"127.0.0.1:{server.port}"
