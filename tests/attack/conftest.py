"""A tiny victim that the attacks can steal, served in-process by the embedded server.

The victim answers "which colour channel dominates the image" (3 classes) with a softmax over
the channel means: a function a small surrogate learns from a few hundred queries, so the
end-to-end tests can ask for agreement well above chance (1/3) in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from serving import testing

SIZE = testing.COLOUR_SIZE
CLASSES = testing.COLOUR_CLASSES
colour_victim = testing.colour_victim
colour_images = testing.colour_images


@pytest.fixture(scope="session")
def victim_dir(tmp_path_factory):
    """A models folder with the colour victim as `colours` (version 1) and its models.config."""
    base = tmp_path_factory.mktemp("victims")
    testing.export_colour_victim(base, "colours")
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


@pytest.fixture(scope="session")
def served_victim(victim_dir):
    """The embedded server over the colour victim on 127.0.0.1: one for the run (it keeps no
    per-client state; tests that need a server of their own start one)."""
    with testing.model_server(config_file=victim_dir / "models.config") as server:
        yield server.target


@pytest.fixture(scope="module")
def colour_model():
    """The colour victim as an in-process Keras model (0..255 input, logits)."""
    return colour_victim()
