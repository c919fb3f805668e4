"""The dense victims of the exact attacks: softmax/logreg/mlp, float inputs, one-split datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import UsageError
from victim_export import VictimConfig
from victim_export.__main__ import main
from victim_export.dense import build_dense_classifier, cast_dense_classifier


@pytest.fixture
def gray_npz(tmp_path, monkeypatch):
    """One split only (like ../shared/data/mnist_test10k_uint8.npz): 8x8 grey, 3 classes."""
    monkeypatch.setenv("MEXT_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 150)
    images = rng.integers(0, 60, (150, 8, 8)).astype(np.uint8)
    for c in range(3):  # class c is bright in rows 2c..2c+1
        images[labels == c, 2 * c:2 * c + 2, :] += 180
    path = tmp_path / "gray.npz"
    np.savez(path, x_test=images, y_test=labels)
    return path


def test_config_defaults_and_refusals():
    config = VictimConfig(dataset="d.npz", arch="Softmax")
    assert config.arch == "softmax" and config.input_dtype == "float64"
    assert VictimConfig(dataset="d.npz").input_dtype == "uint8"  # image backbones unchanged
    with pytest.raises(UsageError, match="arch_args"):
        VictimConfig(dataset="d.npz", arch="mlp", arch_args=("width=3",))
    with pytest.raises(UsageError, match="input_dtype"):
        VictimConfig(dataset="d.npz", arch="mlp", input_dtype="uint8")
    with pytest.raises(UsageError, match="weights"):
        VictimConfig(dataset="d.npz", arch="softmax", weights="imagenet")
    with pytest.raises(UsageError, match="flatten"):
        VictimConfig(dataset="d.npz", flatten=True)  # uint8 image input


def test_float64_twin_computes_in_float64():
    model = build_dense_classifier("mlp", 3, (4, 4, 1), hidden=5, seed=0)
    twin = cast_dense_classifier(model, "float64")
    x = np.random.default_rng(0).uniform(0, 1, (7, 4, 4, 1))
    assert twin.output.dtype == "float64"
    w1, b1, w2, b2 = (np.asarray(w, np.float64) for w in model.get_weights())
    expected = np.maximum(x.reshape(7, -1) @ w1 + b1, 0) @ w2 + b2
    assert np.abs(np.asarray(twin(x)) - expected).max() < 1e-12


@pytest.mark.parametrize("arch,args,flat", [("softmax", [], False),
                                            ("mlp", ["--arch-args", "hidden=4"], True),
                                            ("logreg", ["--arch-args", "positive=1"], False)])
def test_train_and_export_float64_signature(gray_npz, tmp_path, arch, args, flat):
    import tensorflow as tf

    out = tmp_path / "victims"
    code = main(["--dataset", str(gray_npz), "--train-split", "test", "--test-split", "test",
                 "--arch", arch, *args, "--epochs", "3", "--batch-size", "16",
                 "--learning-rate", "0.02", "--val-split", "0", "--export-logits",
                 "--out", str(out), "--name", "v",
                 *(["--flatten"] if flat else [])])
    assert code == 0
    card = json.loads((out / "v" / "card.json").read_text())["versions"]["1"]
    assert card["train_examples"] == 120 and card["test_examples"] == 30  # 20% held out
    signature = card["signature"]
    assert signature["inputs"]["images"]["dtype"] == "float64"
    assert signature["inputs"]["images"]["shape"] == ([-1, 64] if flat else [-1, 8, 8, 1])
    assert signature["outputs"]["logits"]["dtype"] == "float64"
    classes = 2 if arch == "logreg" else 3
    assert card["num_classes"] == classes
    loaded = tf.saved_model.load(str(out / "v" / "1"))
    x = np.random.default_rng(1).uniform(0, 1, (5, 64) if flat else (5, 8, 8, 1))
    answer = loaded.signatures["serving_default"](images=tf.constant(x))
    assert answer["probabilities"].dtype == tf.float64
    np.testing.assert_allclose(answer["probabilities"].numpy().sum(1), 1.0, atol=1e-12)
    if arch == "logreg":
        assert np.all(answer["logits"].numpy()[:, 0] == 0.0)  # logits [0, z]
    assert card["test_accuracy"] > 0.6
