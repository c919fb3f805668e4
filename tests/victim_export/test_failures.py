"""What `python -m victim_export` does when its output cannot be written (issue 17, case 1).

An unwritable ``--out`` is one line and exit code 2 before any training; an export that fails
after training (the disk filled up, another process took the folder) never loses the trained
model: it is exported into a fresh temporary folder instead and the one-line error says where.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

from common.backbones import build_classifier
from common.errors import UsageError
from victim_export import VictimConfig
from victim_export.__main__ import main
from victim_export.train import TrainedVictim, save_or_keep


def _args(tiny_npz, out):
    return ["--dataset", str(tiny_npz), "--epochs", "1", "--batch-size", "16", "--out", str(out),
            "--name", "tiny", "--arch-args", "filters=[4]", "block_dropout=[0.0]", "dense_units=8"]


@pytest.mark.parametrize("where", ["under_a_file", "name_is_a_file"])
def test_unwritable_out_is_one_line_before_training(tiny_npz, tmp_path, capsys, where):
    if where == "under_a_file":
        (tmp_path / "blocker").write_text("x")
        out = tmp_path / "blocker" / "victims"
    else:  # <out>/<name> taken by a file: found before training, not after
        out = tmp_path / "victims"
        out.mkdir()
        (out / "tiny").write_text("x")
    assert main(_args(tiny_npz, out)) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1
    if where == "under_a_file":
        assert "`--out`" in err[0] and "blocker is a file, not a folder" in err[0]
    else:
        assert "`--name`" in err[0] and "not a file in" in err[0]
    assert "Epoch" not in captured.out  # refused before any training


def _trained(tmp_path) -> tuple[VictimConfig, TrainedVictim]:
    model = build_classifier("cnn", 3, input_size=16, weights="none", filters=[4],
                             block_dropout=[0.0], dense_units=8)
    config = VictimConfig(dataset="memory", out=str(tmp_path / "victims"), name="tiny",
                          epochs=1, container_base_path="local")
    trained = TrainedVictim(model=model, class_names=("r", "g", "b"), input_size=16,
                            test_accuracy=0.5, per_class_accuracy={}, epochs_run=1,
                            best_epoch=None, training_seconds=1.0, history={},
                            train_examples=10, val_examples=0, test_examples=10)
    return config, trained


@pytest.mark.slow  # two SavedModel exports: about 10 s on the shared 2-core machine
def test_a_failed_export_keeps_the_trained_model_and_says_where(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    config, trained = _trained(tmp_path)
    (tmp_path / "victims").mkdir()
    (tmp_path / "victims" / "tiny").write_text("taken after the checks, during training")
    with pytest.raises(UsageError) as caught:
        save_or_keep(config, trained)
    message = str(caught.value)
    kept = [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("victim_export-tiny-")]
    assert len(kept) == 1
    version = kept[0] / "tiny" / "1"
    assert f"exported to {version} instead" in message and "Nothing is lost" in message
    assert f"move {version.parent} into {tmp_path / 'victims'}" in message
    assert (version / "saved_model.pb").is_file() and (kept[0] / "models.config").is_file()

    import tensorflow as tf

    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
    served = tf.saved_model.load(str(version)).signatures["serving_default"]
    probabilities = served(images=tf.constant(images))["probabilities"].numpy()
    expected = tf.nn.softmax(trained.model(images.astype(np.float32))).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)


def test_an_undecodable_image_is_named_without_a_python_object_repr(tmp_path, capsys):
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    (folder / "x.jpg").write_bytes(b"not a jpeg")
    assert main(["--dataset", str(tmp_path / "images"), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`--dataset`" in err
    assert "'cat/x.jpg' cannot be decoded: not an image format Pillow reads" in err
    assert "object at 0x" not in err
