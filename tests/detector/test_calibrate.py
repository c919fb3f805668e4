"""Recalibrating an exported OOD detector (`python -m detector.calibrate`) on tiny data: the new
version carries the new threshold and is what `OODDetector.load` and `detector.evaluate` use, the
held-out split is exactly the one training calibrated on, the source version is untouched, and
bad arguments or missing data exit 2 with one line before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import detector.training as training
from detector import evasion
from detector.calibrate import CalibrateConfig, _load_heldout, main
from detector.evaluate import main as evaluate_main
from detector.export import CALIBRATION_NAME
from detector.ood import OODDetector
from detector.train import main as train_main
from tests.detector.conftest import TINY_CNN, attack_images, benign_images, write_npz

HOLDOUT = 0.25


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny detector trained through the CLI, with the held-out images train scored."""
    base = tmp_path_factory.mktemp("calibrate_data")
    # Three benign classes, a benign limit and JPEG augmentation: every step of the split counts.
    benign = write_npz(base / "benign.npz", benign_images(300, 0), benign_images(60, 1), 3)
    attack = write_npz(base / "attack.npz", attack_images(240, 2), attack_images(60, 3), 4)
    out = tmp_path_factory.mktemp("detectors") / "tiny_ood" / "1"
    scored: list[np.ndarray] = []
    original = training._scores

    def recording(model, images, *args, **kwargs):
        scored.append(np.array(images, copy=True))
        return original(model, images, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "_scores", recording)
        code = train_main(["--benign", str(benign), "--attack", str(attack), "--backbone", "cnn",
                           "--arch-args", *TINY_CNN, "--epochs", "2", "--batch-size", "32",
                           "--benign-limit", "280", "--holdout", str(HOLDOUT),
                           "--target-fpr", "0.05", "--out", str(out)])
    assert code == 0
    benign_held, attack_held = scored[-2:]
    return {"out": out, "benign": benign, "attack": attack, "benign_held": benign_held,
            "attack_held": attack_held}


def test_heldout_sets_are_exactly_the_images_training_calibrated_on(trained):
    out = trained["out"]
    calibration = json.loads((out / CALIBRATION_NAME).read_text())
    config = CalibrateConfig(detector=str(out), target_fpr=0.1,
                             out=str(out.parent / "99"))
    benign_held, attack_held, _ = _load_heldout(config, calibration["config"], out,
                                                calibration["heldout_examples"])
    np.testing.assert_array_equal(benign_held.images, trained["benign_held"])
    # The held-out attack images went through the same seeded JPEG re-encoding as in training.
    np.testing.assert_array_equal(attack_held.images, trained["attack_held"])
    assert len(benign_held) == 70 and len(attack_held) == 60


def test_recalibration_writes_a_new_version_with_the_new_threshold(trained, tmp_path, capsys):
    source = trained["out"]
    before = tree(source)
    card_before = json.loads((source.parent / "card.json").read_text())["versions"]["1"]
    new = source.parent / "2"
    assert main(["--detector", str(source), "--target-fpr", "0.1", "--out", str(new)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{new}: threshold ") and "benign FPR target 0.1" in line
    assert "WARNING" not in line

    assert tree(source) == before  # the source version is immutable
    old = json.loads((source / CALIBRATION_NAME).read_text())
    calibration = json.loads((new / CALIBRATION_NAME).read_text())
    assert calibration["target_fpr"] == 0.1 and calibration["recalibrated_from"] == str(source)
    assert calibration["threshold"] < old["threshold"]
    assert calibration["thresholds"]["0.1"] == calibration["threshold"]
    assert set(calibration["thresholds"]) == {"0.001", "0.01", "0.05", "0.1"}
    assert calibration["heldout_by_target_fpr"]["0.1"] == calibration["heldout_at_threshold"]
    assert calibration["config"] == old["config"]
    # The held-out split is training's: the training threshold comes back for its own rate,
    # and the new threshold flags exactly floor(0.1 * n) of the held-out benign images.
    check = calibration["recalibration"]
    assert check["source_threshold_reproduced"] is True
    assert calibration["thresholds"]["0.05"] == pytest.approx(old["threshold"], rel=1e-4)
    n = calibration["heldout_examples"]["benign"]
    assert n == old["heldout_examples"]["benign"] == 70
    assert calibration["heldout_at_threshold"]["benign_fpr"] == pytest.approx(7 / 70, abs=1e-9)
    assert calibration["heldout_at_threshold"]["anomalous_accuracy"] is not None
    # The SavedModel is a byte-for-byte copy.
    assert (new / "saved_model.pb").read_bytes() == before["saved_model.pb"]
    assert not any(p.name.startswith(".tmp-") for p in source.parent.iterdir())
    card = json.loads((source.parent / "card.json").read_text())["versions"]
    assert card["1"] == card_before
    assert card["2"]["threshold"] == calibration["threshold"] and card["2"]["version"] == 2
    assert card["2"]["signature"] == card_before["signature"]

    # Loading (the gateway's `detectors.ood.path`, a version or the model folder) uses it.
    detector = OODDetector.load(new)
    assert detector.threshold == calibration["threshold"]
    assert OODDetector.load(source).threshold == old["threshold"]
    assert OODDetector.load(source.parent).path == new
    # predict agrees with the calibration at the boundary (float32 scores, float64 threshold).
    assert detector.predict(trained["benign_held"]).sum() == 7

    # detector.evaluate reports its calibrated row at the new threshold.
    out = tmp_path / "eval"
    assert evaluate_main(["--detector", str(new), "--benign", str(trained["benign"]),
                          "--attack", str(trained["attack"]), "--attack-split", "test",
                          "--out", str(out)]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert result["rows"]["calibrated"]["threshold"] == calibration["threshold"]
    assert result["target_fpr"] == 0.1

    # A recalibrated version recalibrates in turn (its config is still the training's).
    assert main(["--detector", str(new), "--target-fpr", "0.01", "--out",
                 str(source.parent / "3"), "--no-heldout-attack"]) == 0
    third = json.loads((source.parent / "3" / CALIBRATION_NAME).read_text())
    assert third["recalibrated_from"] == str(new)
    assert third["heldout_at_threshold"]["anomalous_accuracy"] is None
    assert third["recalibration"]["source_threshold_reproduced"] is True
    assert OODDetector.load(source.parent / "3").threshold == third["threshold"]


def test_calibration_on_transformed_views_keeps_each_within_the_rate(trained):
    source = trained["out"]
    views = source.parent.parent / "views" / "tiny_ood" / "1"
    assert main(["--detector", str(source), "--target-fpr", "0.05", "--out", str(views),
                 "--transforms", "evasions"]) == 0
    one = json.loads((source / CALIBRATION_NAME).read_text())  # training's, clean, at 0.05
    both = json.loads((views / CALIBRATION_NAME).read_text())
    assert both["calibration_transforms"] == "evasions"
    rates = both["heldout_benign_fpr_by_transform"]
    assert list(rates) == ["none", "jpeg:95", "jpeg:75", "jpeg:50", "resize:0.5", "blur:1",
                           "noise:8"]
    assert all(rate <= 0.05 for rate in rates.values())
    # The worst view sets the threshold: never below the clean images' own.
    assert both["threshold"] >= one["threshold"]
    assert both["recalibration"]["source_threshold_reproduced"] is True
    detector = OODDetector.load(views)
    held = trained["benign_held"]
    assert detector.predict(held).mean() == pytest.approx(rates["none"])
    assert detector.predict(evasion.blur(held, 1.0)).mean() == pytest.approx(rates["blur:1"])


def test_moved_data_is_found_with_overrides_and_named_without(trained, tmp_path, capsys,
                                                              monkeypatch):
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(trained["benign"], moved / "b.npz")
    shutil.copy(trained["attack"], moved / "a.npz")
    source = trained["out"]
    # Paths in the stored config are relative to where training ran: run from elsewhere.
    calibration = json.loads((source / CALIBRATION_NAME).read_text())
    copy = tmp_path / "det" / "tiny" / "1"
    shutil.copytree(source, copy)
    calibration["config"]["benign"] = "data/benign.npz"
    calibration["config"]["attack"] = "data/attack.npz"
    (copy / CALIBRATION_NAME).write_text(json.dumps(calibration))
    monkeypatch.chdir(tmp_path)

    assert main(["--detector", str(copy), "--target-fpr", "0.1", "--out",
                 str(copy.parent / "2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`benign`" in err[0] and "--benign" in err[0]
    assert "data/benign.npz" in err[0]
    assert not (copy.parent / "2").exists()

    assert main(["--detector", str(copy), "--target-fpr", "0.1", "--out", str(copy.parent / "2"),
                 "--benign", str(moved / "b.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`attack`" in err[0] and "--attack" in err[0]

    assert main(["--detector", str(copy), "--target-fpr", "0.1", "--out", str(copy.parent / "2"),
                 "--benign", str(moved / "b.npz"), "--attack", str(moved / "a.npz")]) == 0
    capsys.readouterr()
    result = json.loads((copy.parent / "2" / CALIBRATION_NAME).read_text())
    assert result["recalibration"]["source_threshold_reproduced"] is True
    assert result["recalibration"]["data"]["benign"] == str(moved / "b.npz")

    # Other data than the training's gives another held-out split: refused.
    other = moved / "other.npz"
    write_npz(other, benign_images(200, 7), benign_images(10, 8), 3)
    assert main(["--detector", str(copy), "--target-fpr", "0.1", "--out", str(copy.parent / "4"),
                 "--benign", str(other), "--no-heldout-attack"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "held-out split had 70 benign images" in err[0]
    assert not (copy.parent / "4").exists()


@pytest.mark.parametrize("flags, argument", [  # the flag the user typed (issue 17, case 11)
    (["--target-fpr", "1.5"], "`--target-fpr`"),
    (["--target-fpr", "-0.1"], "`--target-fpr`"),
    (["--target-fpr", "lots"], "--target-fpr"),
    (["--out", "{base}/x"], "`--out`"),
    (["--out", "{base}/tiny_ood/1"], "`--out`"),  # existing: versions are never overwritten
    (["--out", "{base}/tiny_ood/1/saved_model.pb/5"], "saved_model.pb is a file"),
    (["--detector", "{base}/none"], "`--detector`"),
    (["--exclude-classes", "/no/such/list.txt"], "`--exclude-classes`"),
    (["--benign", "/no/such/benign.npz"], "`--benign`"),
])
def test_bad_arguments_exit_2_with_one_line(flags, argument, trained, capsys):
    source = trained["out"]
    base = source.parent.parent
    before = sorted(p.name for p in source.parent.iterdir())
    args = {"--detector": str(source), "--target-fpr": "0.1", "--out": str(base / "t" / "5")}
    for flag, value in zip(flags[::2], flags[1::2]):
        args[flag] = value.format(base=base)
    argv = [item for pair in args.items() for item in pair]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert argument in err[-1]
    if not argument.startswith("--"):
        assert len(err) == 1 and err[0].startswith("python -m detector.calibrate: error: ")
    assert not (base / "t").exists()
    assert sorted(p.name for p in source.parent.iterdir()) == before


def test_a_detector_without_training_config_is_refused(trained, tmp_path, capsys):
    copy = tmp_path / "m" / "1"
    shutil.copytree(trained["out"], copy)
    calibration = json.loads((copy / CALIBRATION_NAME).read_text())
    del calibration["config"]
    (copy / CALIBRATION_NAME).write_text(json.dumps(calibration))
    assert main(["--detector", str(copy), "--target-fpr", "0.1", "--out",
                 str(tmp_path / "m" / "2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`--detector`" in err[0] and "config" in err[0]
    assert not (tmp_path / "m" / "2").exists()
