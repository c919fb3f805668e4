"""The OOD query detector on tiny data: training with calibration, the export (a victim-layout
SavedModel with assets.extra/calibration.json) and its round trip, resuming a killed training,
the metrics, and the command lines (including exit code 2 on bad input)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import UsageError
from detector.config import DetectorConfig
from detector.evaluate import main as evaluate_main
from detector.export import CALIBRATION_NAME
from detector.metrics import calibrate_threshold, detection_metrics, roc_auc, roc_curve
from detector.ood import OODDetector
from detector.splits import jpeg_reencode
from detector.train import main as train_main
from detector.training import train_detector
from tests.detector.conftest import (
    SIDE,
    TINY_CNN,
    as_dataset,
    attack_images,
    benign_images,
    write_npz,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("ood_data")
    benign = write_npz(base / "benign.npz", benign_images(240, 0), benign_images(100, 1))
    attack = write_npz(base / "attack.npz", attack_images(240, 2), attack_images(100, 3))
    return benign, attack


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One detector trained and exported through the command line."""
    benign, attack = data
    out = tmp_path_factory.mktemp("detectors") / "tiny_ood" / "1"
    code = train_main(["--benign", str(benign), "--attack", str(attack), "--backbone", "cnn",
                       "--arch-args", *TINY_CNN, "--epochs", "2", "--batch-size", "32",
                       "--holdout", "0.25", "--target-fpr", "0.05", "--out", str(out)])
    assert code == 0
    return out


def test_training_exports_a_victim_layout_savedmodel_with_calibration(trained):
    assert (trained / "saved_model.pb").is_file() and (trained / "variables").is_dir()
    calibration = json.loads((trained / CALIBRATION_NAME).read_text())
    assert calibration["benign_class"] == 0 and calibration["target_fpr"] == 0.05
    assert 0.0 < calibration["threshold"] < 1.0
    assert calibration["input_shape"] == [SIDE, SIDE, 3]
    assert calibration["heldout_at_threshold"]["benign_accuracy"] >= 0.95
    assert calibration["heldout_at_threshold"]["anomalous_accuracy"] >= 0.95
    card = json.loads((trained.parent / "card.json").read_text())
    assert card["versions"]["1"]["class_names"] == ["benign", "attack"]
    assert not any(p.name.startswith(".train-") for p in trained.parent.iterdir())


def test_exported_detector_loads_scores_and_predicts(trained):
    detector = OODDetector.load(trained)
    assert detector.input_shape == (SIDE, SIDE, 3)
    calibration = json.loads((trained / CALIBRATION_NAME).read_text())
    assert detector.threshold == calibration["threshold"]
    benign, attack = benign_images(64, 10), attack_images(64, 11)
    scores = detector.score(benign)
    assert scores.shape == (64,) and scores.dtype == np.float32
    assert detector.predict(benign).mean() <= 0.1
    assert detector.predict(attack).mean() >= 0.9
    np.testing.assert_array_equal(detector.predict(attack),
                                  detector.score(attack) >= detector.threshold)
    # The model folder resolves to its highest version; a threshold override is honoured.
    again = OODDetector.load(trained.parent, threshold=0.99)
    assert again.path == trained and again.threshold == 0.99
    # Other sizes are resized like a client adapting to the signature; empty batches work.
    big = np.repeat(np.repeat(attack[:4], 2, axis=1), 2, axis=2)
    assert detector.score(big).shape == (4,)
    assert detector.score(np.zeros((0, SIDE, SIDE, 3), np.uint8)).shape == (0,)


def test_the_savedmodel_answers_two_probabilities_from_uint8(trained):
    import tensorflow as tf

    signature = tf.saved_model.load(str(trained)).signatures["serving_default"]
    spec = signature.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, SIDE, SIDE, 3]
    probs = signature(images=tf.constant(attack_images(3, 5)))["probabilities"].numpy()
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(probs[:, 1] > 0.5)


def test_evaluate_prints_atli_table_and_writes_reports(trained, data, tmp_path, capsys):
    benign, attack = data
    out = tmp_path / "eval"
    code = evaluate_main(["--detector", str(trained), "--benign", str(benign), "--attack",
                          str(attack), "--attack-split", "test", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "benign accuracy" in printed and "anomalous accuracy" in printed and "ROC AUC" in printed
    result = json.loads((out / "evaluation.json").read_text())
    assert result["benign_examples"] == 100 and result["attack_examples"] == 100
    assert result["rows"]["calibrated"]["anomalous_accuracy"] >= 0.95
    assert result["roc_auc"] >= 0.99
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| threshold |" in (out / "evaluation.md").read_text()


def test_killed_training_resumes_from_its_last_epoch(tmp_path):
    import keras

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise KeyboardInterrupt("killed")

    benign = as_dataset(benign_images(80, 20), "b")
    attack = as_dataset(attack_images(80, 21), "a")
    config = DetectorConfig(benign="b", attack="a", out=str(tmp_path / "d" / "1"), epochs=2,
                            batch_size=32, arch_args=TINY_CNN)
    with pytest.raises(KeyboardInterrupt):
        train_detector(config, benign=benign, attack=attack, callbacks=[Crash()])
    assert (tmp_path / "d" / ".train-1" / "backup").is_dir()
    assert not (tmp_path / "d" / "1").exists()
    result = train_detector(config, benign=benign, attack=attack)
    assert len(result.history["loss"]) == 1  # only the second epoch ran
    assert (tmp_path / "d" / "1" / CALIBRATION_NAME).is_file()
    assert not (tmp_path / "d" / ".train-1").exists()


def test_calibrated_threshold_meets_the_target_rate():
    scores = np.random.default_rng(0).random(1000)
    for fpr in (0.0, 0.01, 0.05, 0.2):
        t = calibrate_threshold(scores, fpr)
        assert np.mean(scores >= t) <= fpr
        assert np.mean(scores >= np.nextafter(scores[scores < t].max(), -1)) > fpr
    ties = np.r_[np.zeros(90), np.full(10, 0.7)]
    assert np.mean(ties >= calibrate_threshold(ties, 0.05)) <= 0.05
    with pytest.raises(UsageError, match="target_fpr"):
        calibrate_threshold(scores, 1.0)


def test_roc_auc_and_curve_agree_with_brute_force():
    rng = np.random.default_rng(1)
    benign, attack = rng.normal(0, 1, 200), rng.normal(1, 1, 150)
    brute = np.mean((attack[:, None] > benign[None]) + 0.5 * (attack[:, None] == benign[None]))
    assert roc_auc(benign, attack) == pytest.approx(brute)
    curve = roc_curve(benign, attack)
    assert curve["fpr"][0] == 0 and curve["tpr"][-1] == 1 and curve["fpr"][-1] == 1
    assert np.trapezoid(curve["tpr"], curve["fpr"]) == pytest.approx(brute)
    json.dumps(curve, allow_nan=False)
    row = detection_metrics([0.1, 0.2, 0.9], [0.8, 0.95, 0.3, 0.7], 0.5)
    assert row["benign_accuracy"] == pytest.approx(2 / 3)
    assert row["anomalous_accuracy"] == pytest.approx(3 / 4)


@pytest.mark.parametrize("flags, argument", [  # the flag the user typed (issue 17, case 11)
    (["--out", "detectors/x"], "`--out`"),
    (["--target-fpr", "1.5"], "`--target-fpr`"),
    (["--backbone", "nonet"], "`--backbone`"),
    (["--holdout", "0"], "`--holdout`"),
    (["--weights", "/no/such/file.h5"], "`--weights`"),
    (["--exclude-classes", "/no/such/list.txt"], "`--exclude-classes`"),
    (["--epochs", "zero"], "--epochs"),
    (["--jpeg-augment", "2"], "`--jpeg-augment`"),
])
def test_train_cli_bad_input_exits_2_naming_the_argument(flags, argument, data, tmp_path, capsys):
    benign, attack = data
    argv = ["--benign", str(benign), "--attack", str(attack), "--out",
            str(tmp_path / "d" / "1"), *flags]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert argument in err[-1]
    assert not (tmp_path / "d").exists()


def test_train_refuses_an_existing_version(trained, data, capsys):
    benign, attack = data
    before = sorted(p.name for p in trained.iterdir())
    assert train_main(["--benign", str(benign), "--attack", str(attack), "--out",
                       str(trained)]) == 2
    assert "out" in capsys.readouterr().err
    assert sorted(p.name for p in trained.iterdir()) == before


def test_evaluate_cli_bad_input_exits_2(data, tmp_path, capsys):
    benign, attack = data
    assert evaluate_main(["--detector", str(tmp_path / "none"), "--benign", str(benign),
                          "--attack", str(attack), "--out", str(tmp_path / "e")]) == 2
    assert "detector" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert evaluate_main(["--detector", str(tmp_path / "empty"), "--benign", str(benign),
                          "--attack", str(attack), "--out", str(tmp_path / "e")]) == 2
    assert "saved_model.pb" in capsys.readouterr().err


def test_loading_a_model_without_calibration_names_the_file(tmp_path):
    import keras

    from victim_export import export_classifier

    inputs = keras.Input((SIDE, SIDE, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    path = export_classifier(model, tmp_path, "plain", version=1)
    with pytest.raises(UsageError, match="calibration.json"):
        OODDetector.load(path)


def test_jpeg_reencoding_is_seeded_and_touches_the_requested_share():
    images = benign_images(200, 30)
    np.testing.assert_array_equal(jpeg_reencode(images, 0.0, seed=0), images)
    half = jpeg_reencode(images, 0.5, seed=1)
    changed = np.any(half != images, axis=(1, 2, 3))
    assert 0.35 < changed.mean() < 0.65
    np.testing.assert_array_equal(half, jpeg_reencode(images, 0.5, seed=1))
    assert half.dtype == np.uint8 and half.shape == images.shape


def test_evaluate_can_reencode_the_attack_images(trained, data, tmp_path, capsys):
    benign, attack = data
    out = tmp_path / "eval_jpeg"
    assert evaluate_main(["--detector", str(trained), "--benign", str(benign), "--attack",
                          str(attack), "--attack-split", "test", "--attack-jpeg-quality", "75",
                          "--out", str(out)]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert result["jpeg_quality"] == {"benign": None, "attack": 75}
    assert "JPEG q75" in capsys.readouterr().out
    assert evaluate_main(["--detector", str(trained), "--benign", str(benign), "--attack",
                          str(attack), "--attack-jpeg-quality", "101", "--out", str(out)]) == 2
    assert "`--attack-jpeg-quality`. Received: --attack-jpeg-quality=101" in capsys.readouterr().err
