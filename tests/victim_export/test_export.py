"""Tests of export_classifier: the SavedModel TF Serving loads, atomic versions, the card."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.backbones import build_classifier
from common.errors import UsageError
from victim_export.export import export_classifier, next_version, read_card

CLASSES = ("red", "green", "blue")


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(3)
    return build_classifier("cnn", 3, input_size=16, filters=(4, 8), block_dropout=(0.1, 0.1),
                            dense_units=8)


def _images(count: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 16, 16, 3), dtype=np.uint8)


def _serving(path):
    loaded = tf.saved_model.load(str(path))
    return loaded, loaded.signatures["serving_default"]


def test_signature_is_uint8_images_to_probabilities(tmp_path, model):
    path = export_classifier(model, tmp_path, "tiny", class_names=CLASSES)
    assert path == tmp_path / "tiny" / "1"
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    _, serve = _serving(path)
    (spec,) = serve.structured_input_signature[1].values()
    assert list(serve.structured_input_signature[1]) == ["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 16, 16, 3]
    assert set(serve.structured_outputs) == {"probabilities"}
    out = serve.structured_outputs["probabilities"]
    assert out.dtype == tf.float32 and out.shape.as_list() == [None, 3]

    images = _images()
    probabilities = serve(images=tf.constant(images))["probabilities"].numpy()
    expected = tf.nn.softmax(model(images.astype(np.float32), training=False)).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_export_logits_adds_a_logits_output(tmp_path, model):
    path = export_classifier(model, tmp_path, "tiny", class_names=CLASSES, export_logits=True)
    _, serve = _serving(path)
    assert set(serve.structured_outputs) == {"probabilities", "logits"}
    images = _images(seed=1)
    outputs = serve(images=tf.constant(images))
    logits = model(images.astype(np.float32), training=False).numpy()
    np.testing.assert_allclose(outputs["logits"].numpy(), logits, atol=1e-5)
    np.testing.assert_allclose(outputs["probabilities"].numpy(),
                               tf.nn.softmax(logits).numpy(), atol=1e-5)


def test_versions_count_up_are_never_overwritten_and_leave_no_temp_dirs(tmp_path, model):
    assert next_version(tmp_path / "tiny") == 1
    first = export_classifier(model, tmp_path, "tiny", class_names=CLASSES,
                              card={"dataset": "one"})
    second = export_classifier(model, tmp_path, "tiny", class_names=CLASSES,
                               card={"dataset": "two"})
    assert (first.name, second.name) == ("1", "2")
    assert export_classifier(model, tmp_path, "tiny", version=7, class_names=CLASSES).name == "7"
    assert next_version(tmp_path / "tiny") == 8
    before = (second / "saved_model.pb").read_bytes()
    with pytest.raises(UsageError, match=r"argument `version`.*next free: 8.*never overwritten"):
        export_classifier(model, tmp_path, "tiny", version=2, class_names=CLASSES)
    assert (second / "saved_model.pb").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["1", "2", "7", "card.json"]


def test_card_describes_every_version(tmp_path, model):
    export_classifier(model, tmp_path, "tiny", class_names=CLASSES,
                      card={"dataset": "one", "test_accuracy": 0.5})
    export_classifier(model, tmp_path, "tiny", class_names=CLASSES, export_logits=True,
                      card={"dataset": "two"})
    card = json.loads((tmp_path / "tiny" / "card.json").read_text())
    assert card == read_card(tmp_path / "tiny")
    assert card["name"] == "tiny" and list(card["versions"]) == ["1", "2"]
    one, two = card["versions"]["1"], card["versions"]["2"]
    assert one["dataset"] == "one" and one["test_accuracy"] == 0.5 and two["dataset"] == "two"
    assert one["class_names"] == list(CLASSES) and one["input_shape"] == [16, 16, 3]
    assert one["signature"]["inputs"]["images"] == {
        "dtype": "uint8", "shape": [-1, 16, 16, 3], "description": "raw RGB pixels, 0..255"}
    assert set(one["signature"]["outputs"]) == {"probabilities"}
    assert set(two["signature"]["outputs"]) == {"probabilities", "logits"}
    assert one["created"].endswith("+00:00")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"class_names": ("a", "b")}, r"argument `class_names`.*3 names"),
        ({"name": "a/b"}, "argument `name`"),
        ({"version": 0}, "argument `version`"),
        ({"input_shape": (32, 32, 3)}, "argument `input_shape`"),
        ({"card": {"when": object()}}, "argument `card`"),
    ],
)
def test_bad_arguments_fail_before_writing(tmp_path, model, kwargs, match):
    values = {"name": "tiny", "class_names": CLASSES, **kwargs}
    with pytest.raises(UsageError, match=match):
        export_classifier(model, tmp_path / "base", **values)
    assert not (tmp_path / "base").exists()


def test_a_corrupt_card_stops_the_export_before_writing(tmp_path, model):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "card.json").write_text("{oops")
    with pytest.raises(UsageError, match="card.json"):
        export_classifier(model, tmp_path, "tiny", class_names=CLASSES)
    assert not (tmp_path / "tiny" / "1").exists()
