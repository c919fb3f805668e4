"""High-fidelity learning (Jagielski et al. 2020's learning-based attack, FixMatch-style):
the augmentations, the confidence threshold, the cached result, the knockoff option end to end
through real gRPC, and its bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from attack.knockoff import main, run_knockoff
from attack.semisupervised import fit_semi_supervised, strong_augment, weak_augment
from attack.surrogate import SurrogateTrainer
from common.errors import UsageError
from serving.testing import colour_images, colour_victim
from tests.attack.helpers import assert_refused, knockoff_config


def victim_targets(images: np.ndarray) -> np.ndarray:
    return np.asarray(tf.nn.softmax(colour_victim()(images.astype(np.float32))))


def test_augmentations_keep_shape_and_range():
    rng = tf.random.Generator.from_seed(0)
    images = tf.constant(colour_images(8, seed=3), tf.float32)
    weak = weak_augment(images, rng).numpy()
    strong = strong_augment(images, rng).numpy()
    assert weak.shape == strong.shape == images.shape
    assert strong.min() >= 0 and strong.max() <= 255
    # a weak view is the image flipped and shifted: its pixels are the image's or padding
    values = set(np.unique(images.numpy())) | {0.0}
    assert set(np.unique(weak)) <= values
    assert not np.allclose(strong, weak)


def test_threshold_gates_the_pseudo_labels_and_it_learns(tmp_path):
    labelled = colour_images(40, seed=4)
    unlabelled = colour_images(200, seed=5)
    test = colour_images(200, seed=6)
    truth = victim_targets(test).argmax(axis=1)

    def trainer(path=None, epochs=6):
        return SurrogateTrainer("cnn", "none", 16, 3, epochs=epochs, batch_size=20, lr=3e-3,
                                seed=0, checkpoint_dir=path)

    never = trainer(epochs=1)
    fit_semi_supervised(never, labelled, victim_targets(labelled), unlabelled,
                        confidence=0.999999)
    # an untrained net is never that sure: no pseudo-label, no unlabelled loss
    assert never.history["mask_rate"][0] == 0.0
    assert never.history["unlabelled_loss"][0] == 0.0

    first = trainer(tmp_path / "ck")
    fit_semi_supervised(first, labelled, victim_targets(labelled), unlabelled, confidence=0.6)
    assert max(first.history["mask_rate"]) > 0.2  # confident pseudo-labels are used
    agreement = np.mean(first.predict_probs(test).argmax(axis=1) == truth)
    assert agreement > 0.6  # chance: 1/3

    again = trainer(tmp_path / "ck")  # a resumed attack: loaded, not trained again
    fit_semi_supervised(again, labelled, victim_targets(labelled), unlabelled, confidence=0.6)
    assert again.history == first.history
    assert np.allclose(again.predict_logits(test), first.predict_logits(test), atol=1e-5)


def test_knockoff_semi_supervised_end_to_end(served_victim, data_files, tmp_path):
    config = knockoff_config(served_victim, data_files, tmp_path / "run", budget=60,
                             semi_supervised=True, unlabelled=300, confidence=0.7, epochs=6,
                             batch_size=20, curve_points=1)
    result = run_knockoff(config)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert result.queries == 60
    assert report["extra"]["semi_supervised"]["unlabelled"] == 300
    assert report["evaluation"]["fidelity_test"] > 0.6


def test_unlabelled_needs_the_option_and_enough_images(capsys, served_victim, data_files,
                                                        tmp_path):
    transfer, _ = data_files
    code = main(["--transfer-set", str(transfer), "--unlabelled", "10",
                 "--out", str(tmp_path / "a")])
    assert_refused(capsys, code, "`--semi-supervised`")
    code = main(["--transfer-set", str(transfer), "--semi-supervised",
                 "--out", str(tmp_path / "a")])
    assert code == 2
    assert "`--unlabelled`" in capsys.readouterr().err
    config = knockoff_config(served_victim, data_files, tmp_path / "b", budget=400,
                             semi_supervised=True, unlabelled=200)
    with pytest.raises(UsageError, match="`unlabelled`.*at most 100"):
        run_knockoff(config)  # 600 transfer images - 100 held out - 400 queried
    assert not (tmp_path / "b").exists()
