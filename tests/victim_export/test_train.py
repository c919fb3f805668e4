"""Tests of the training pipeline and of `python -m victim_export` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from common.data import ImageDataset
from common.errors import UsageError
from tests.victim_export.tiny_data import make_images
from victim_export import VictimConfig, run_victim_export, train_victim
from victim_export.__main__ import main
from victim_export.train import make_dataset


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_pipeline_shapes_one_hot_labels_and_no_augmentation_for_evaluation():
    images, labels = make_images(10, seed=0)
    (x, y), = _batches(make_dataset(images, labels, size=16, num_classes=3, batch_size=16))
    assert x.dtype == np.float32 and x.shape == (10, 16, 16, 3)
    np.testing.assert_array_equal(x, images.astype(np.float32))  # raw pixels, same order
    np.testing.assert_array_equal(y, np.eye(3)[labels])
    with pytest.raises(UsageError, match="augment"):
        make_dataset(images, labels, size=16, num_classes=3, batch_size=4, augment="flip")


def test_pipeline_resizes_to_whole_pixel_values():
    images, labels = make_images(4, seed=0)
    (x, _), = _batches(make_dataset(images, labels, size=32, num_classes=3, batch_size=8))
    assert x.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(x, np.round(x))
    assert x.min() >= 0 and x.max() <= 255


def test_augmentation_is_seeded_changes_per_epoch_and_flip_really_flips():
    images, labels = make_images(64, seed=0)
    kwargs = dict(size=16, num_classes=3, batch_size=64, shuffle_seed=5)
    first = make_dataset(images, labels, augment="flip", **kwargs)
    epoch1, epoch2 = _batches(first), _batches(first)
    again = _batches(make_dataset(images, labels, augment="flip", **kwargs))
    np.testing.assert_array_equal(epoch1[0][0], again[0][0])  # same seed, same stream
    assert not np.array_equal(epoch1[0][0], epoch2[0][0])  # reshuffled / redrawn per epoch
    # Every flip-augmented image is its original or the mirror image, both occur.
    originals = {img.tobytes(): i for i, img in enumerate(images.astype(np.float32))}
    mirrored = {img[:, ::-1].tobytes(): i for i, img in enumerate(images.astype(np.float32))}
    kinds = ["orig" if x.tobytes() in originals else "flip" if x.tobytes() in mirrored else "?"
             for x in epoch1[0][0]]
    assert "?" not in kinds and {"orig", "flip"} <= set(kinds)
    # Crop shifts content: some images differ from both their original and its mirror.
    (crops, _), = _batches(make_dataset(images, labels, augment="crop", **kwargs))
    assert any(x.tobytes() not in originals and x.tobytes() not in mirrored for x in crops)


def test_rotation_keeps_the_centre_and_plain_images_and_is_seeded():
    # A plain image stays plain (edges reflected, nothing black comes in); a centred square
    # keeps its centre but its corners move; the same seed draws the same angles.
    plain = np.full((1, 16, 16, 3), 120, np.uint8)
    square = np.zeros((8, 16, 16, 3), np.uint8)
    square[:, 4:12, 4:12] = 255
    images = np.concatenate([plain, square])
    kwargs = dict(size=16, num_classes=3, batch_size=16, shuffle_seed=3, augment="rotate")
    labels = np.arange(len(images)) % 3
    (x, y), = _batches(make_dataset(images, labels, **kwargs))
    (again, _), = _batches(make_dataset(images, labels, **kwargs))
    np.testing.assert_array_equal(x, again)
    np.testing.assert_array_equal(x, np.round(x))
    order = np.argmax(y, axis=1)  # the batch is shuffled: find the plain image by content
    flat = [i for i in range(len(x)) if x[i].min() == x[i].max()]
    assert len(flat) == 1 and x[flat[0]].min() == 120 and order[flat[0]] == 0
    squares = np.delete(x, flat, axis=0)
    assert (squares[:, 7:9, 7:9] == 255).all()  # the centre stays inside the square
    assert sum(not np.array_equal(s, square[0]) for s in squares) >= 6  # most rotated
    assert np.abs(squares.mean(axis=(1, 2, 3)) - square[0].mean()).max() < 30  # small angles


def test_color_changes_brightness_and_contrast_within_whole_pixels():
    # mid-grey images (clipping would hide a contrast gain), class c brighter in channel c
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 64)
    images = rng.integers(90, 150, (64, 16, 16, 3)).astype(np.uint8)
    images[np.arange(64), :, :, labels] += 30
    kwargs = dict(size=16, num_classes=3, batch_size=64, shuffle_seed=2)
    (plain, _), = _batches(make_dataset(images, labels, augment="none", **kwargs))
    (x, _), = _batches(make_dataset(images, labels, augment="color", **kwargs))
    np.testing.assert_array_equal(x, np.round(x))
    assert x.min() >= 0 and x.max() <= 255
    means, stds = x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3))
    plain_means, plain_stds = plain.mean(axis=(1, 2, 3)), plain.std(axis=(1, 2, 3))
    # the same images in the same shuffled order, each with its own brightness and contrast
    assert np.abs(means - plain_means).max() > 20 and np.abs(means - plain_means).max() < 70
    assert (stds / plain_stds).max() > 1.1 and (stds / plain_stds).min() < 0.9
    # colour shifts every channel alike: the class's bright channel stays the brightest
    np.testing.assert_array_equal(np.argmax(x.mean(axis=(1, 2)), axis=1),
                                  np.argmax(plain.mean(axis=(1, 2)), axis=1))


def test_traffic_sign_augmentation_parts_in_order():
    images, labels = make_images(16, seed=0)
    (x, _), = _batches(make_dataset(images, labels, size=16, num_classes=3, batch_size=16,
                                    shuffle_seed=1, augment="rotate+crop+color"))
    assert x.shape == (16, 16, 16, 3)
    with pytest.raises(UsageError, match="augment"):
        make_dataset(images, labels, size=16, num_classes=3, batch_size=4, shuffle_seed=1,
                     augment="color+crop")


def _tiny_args(tiny_npz, out, *extra):
    return ["--dataset", str(tiny_npz), "--epochs", "2", "--batch-size", "16", "--out", str(out),
            "--name", "tiny", "--seed", "1", "--learning-rate", "0.003",
            "--arch-args", "filters=[8, 16]", "block_dropout=[0.1, 0.1]", "dense_units=16", *extra]


def test_main_trains_exports_versions_card_and_models_config(tiny_npz, tmp_path, capsys):
    out = tmp_path / "victims"
    assert main(_tiny_args(tiny_npz, out, "--export-logits")) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]  # after Keras' progress bars
    assert summary.startswith("tiny version 1: cnn on ")
    assert summary.endswith(f"-> {out / 'tiny' / '1'}")
    assert (out / "tiny" / "1" / "saved_model.pb").is_file()

    card = json.loads((out / "tiny" / "card.json").read_text())
    entry = card["versions"]["1"]
    assert entry["class_names"] == ["red", "green", "blue"]
    assert entry["architecture"] == "cnn" and entry["weights"] == "none"
    assert entry["input_shape"] == [16, 16, 3] and entry["seed"] == 1
    assert entry["test_examples"] == 30 and entry["train_examples"] + entry["val_examples"] == 96
    assert 1 <= entry["epochs_run"] <= 2 and entry["training_seconds"] > 0
    assert set(entry["per_class_accuracy"]) == {"red", "green", "blue"}
    assert entry["test_accuracy"] > 0.6  # three colour classes: far above chance (1/3)
    assert entry["config"]["dataset"] == str(tiny_npz)
    assert entry["config"]["arch_args"] == ["filters=[8, 16]", "block_dropout=[0.1, 0.1]",
                                            "dense_units=16"]
    assert set(entry["signature"]["outputs"]) == {"probabilities", "logits"}

    # The exported model answers raw uint8 pixels with the card's accuracy.
    images, labels = make_images(30, seed=2)
    serve = tf.saved_model.load(str(out / "tiny" / "1")).signatures["serving_default"]
    probabilities = serve(images=tf.constant(images))["probabilities"].numpy()
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    assert accuracy == pytest.approx(entry["test_accuracy"])

    assert main(_tiny_args(tiny_npz, out, "--augment", "crop", "--epochs", "1")) == 0
    assert "tiny version 2" in capsys.readouterr().out
    card = json.loads((out / "tiny" / "card.json").read_text())
    assert list(card["versions"]) == ["1", "2"]
    assert card["versions"]["2"]["config"]["augment"] == "crop"

    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse((out / "models.config").read_text(), config)
    assert [(c.name, c.base_path, c.model_platform) for c in config.model_config_list.config] \
        == [("tiny", "/models/tiny", "tensorflow")]


def test_existing_version_is_refused_before_training(tiny_npz, tmp_path, capsys):
    out = tmp_path / "victims"
    (out / "tiny" / "3").mkdir(parents=True)
    assert main(_tiny_args(tiny_npz, out, "--version", "3")) == 2
    captured = capsys.readouterr()
    assert "error: Invalid value for argument `--version`" in captured.err
    assert "Epoch" not in captured.out  # refused before any training


def test_python_api_trains_from_in_memory_datasets(tmp_path):
    x_train, y_train = make_images(48, seed=4)
    x_test, y_test = make_images(12, seed=5)
    names = ("r", "g", "b")
    train = ImageDataset(x_train, y_train, names, "memory:train")
    test = ImageDataset(x_test, y_test, names, "memory:test")
    config = VictimConfig(dataset="memory", epochs=1, batch_size=16, val_split=0.0,
                          augment="none", out=str(tmp_path), name="mem", schedule="plateau",
                          optimizer="sgd", learning_rate=0.01, container_base_path="local")
    path, trained = run_victim_export(config, train=train, test=test)
    assert path == tmp_path / "mem" / "1"
    assert trained.val_examples == 0 and trained.best_epoch is None
    assert trained.model.output_shape == (None, 3)
    assert (tmp_path / "models.config").read_text().count(str((tmp_path / "mem").resolve())) == 1
    with pytest.raises(UsageError, match="both `train` and `test`"):
        train_victim(config, train=train)
    other = ImageDataset(x_test, y_test, ("x", "y", "z"), "memory:test")
    with pytest.raises(UsageError, match="test_split"):
        train_victim(config, train=train, test=other)
