"""The robust per-query scores on hand-made numbers: calibration, max-softmax, energy,
Mahalanobis and their combination by benign tail probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.errors import UsageError
from detector.robust import (
    CombinedScore,
    DetectorScore,
    EnergyScore,
    MahalanobisScore,
    MaxSoftmaxScore,
    calibrate,
    threshold_at_fpr,
    threshold_over_views,
)


def test_threshold_at_fpr_keeps_the_rate_even_with_ties():
    benign = np.array([0.1, 0.2, 0.2, 0.3, 5.0, 5.0, 7.0, 9.0, 11.0, 13.0])
    for fpr in (0.0, 0.1, 0.2, 0.3, 0.5):
        t = threshold_at_fpr(benign, fpr)
        assert np.mean(benign >= t) <= fpr
    # 0.5 allows 5 of 10: the sixth-highest score (5.0, tied with the fifth) must stay below.
    assert np.mean(benign >= threshold_at_fpr(benign, 0.5)) == 0.4
    assert threshold_at_fpr([], 0.1) == math.inf
    with pytest.raises(UsageError, match="`fpr`"):
        threshold_at_fpr(benign, 1.0)


def test_threshold_over_views_keeps_every_view_within_the_rate():
    clean = np.linspace(0.0, 1.0, 100)          # 2 of 100 at or above 0.985
    blurred = np.linspace(0.2, 1.2, 100)        # the same images scored higher when blurred
    t, rates = threshold_over_views({"none": clean, "blur:1": blurred}, 0.02)
    assert t == threshold_at_fpr(blurred, 0.02) > threshold_at_fpr(clean, 0.02)
    assert rates["blur:1"] == pytest.approx(0.02) and rates["none"] == 0.0
    assert all(rate <= 0.02 for rate in rates.values())
    # One view: the plain calibration.
    assert threshold_over_views({"none": clean}, 0.05)[0] == threshold_at_fpr(clean, 0.05)
    with pytest.raises(UsageError, match="benign_scores"):
        threshold_over_views({}, 0.02)


def test_max_softmax_and_energy():
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]])
    np.testing.assert_allclose(MaxSoftmaxScore().score(None, probs), [0.1, 0.6])
    logits = np.array([[10.0, 0.0], [0.5, 0.4]])
    energy = EnergyScore().score(None, logits)
    np.testing.assert_allclose(energy, -np.log(np.exp(logits).sum(axis=1)))
    assert energy[0] < energy[1]  # the confident answer has the lower energy
    with pytest.raises(UsageError, match="`probabilities`"):
        MaxSoftmaxScore().score(None, np.ones(3))
    with pytest.raises(UsageError, match="`temperature`"):
        EnergyScore(temperature=0)


def test_mahalanobis_matches_the_definition_and_ranks_outliers_higher():
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0]])
    labels = rng.integers(0, 2, 400)
    scale = np.array([1.0, 3.0, 0.5])
    features = means[labels] + rng.normal(size=(400, 3)) * scale
    score = MahalanobisScore(shrinkage=0.0).fit_features(features, labels)
    query = np.array([[0.5, 1.0, 0.0], [3.0, 0.0, 3.0]])
    explicit = [min((q - m) @ score.precision @ (q - m) for m in score.means) for q in query]
    np.testing.assert_allclose(score.distances(query), explicit, rtol=1e-9)
    # Off the benign manifold along the thin axis (0.5 sd) is far; along the wide one it is not.
    assert score.distances([[0.0, 0.0, 3.0]])[0] > 10 * score.distances([[0.0, 3.0, 0.0]])[0]
    with pytest.raises(UsageError, match="`features`"):
        score.score(np.zeros((1, 4, 4, 3), np.uint8), None)
    with pytest.raises(UsageError, match="MahalanobisScore"):
        MahalanobisScore().distances(query)


def test_mahalanobis_on_images_through_a_feature_function():
    rng = np.random.default_rng(1)

    def mean_colour(images):
        return np.asarray(images, np.float64).mean(axis=(1, 2))

    benign = rng.integers(100, 140, (50, 4, 4, 3)).astype(np.uint8)
    score = MahalanobisScore(mean_colour).fit(benign, np.zeros(50, int))
    far = np.full((1, 4, 4, 3), 250, np.uint8)
    assert score.score(far, None)[0] > score.score(benign, None).max()


class _Fixed:
    def __init__(self, name, values):
        self.name, self.values, self.threshold = name, np.asarray(values, float), math.inf

    def score(self, images, probabilities):
        return self.values[np.asarray(images)]


def test_combined_score_is_the_smallest_benign_tail_probability():
    a = _Fixed("a", [0, 1, 2, 3, 100, 0])
    b = _Fixed("b", [3, 2, 1, 0, 0, 100])
    combined = CombinedScore([a, b]).fit(np.arange(4), None)  # benign reference: rows 0..3
    assert combined.name == "combined(a+b)"
    scores = combined.score(np.arange(6), None)
    # Row 4 beats every benign score of a: tail (1 + 0) / 5; row 0 is a's lowest: tail 1.
    assert scores[4] == pytest.approx(-np.log(1 / 5)) == pytest.approx(scores[5])
    assert scores[0] == pytest.approx(-np.log(2 / 5))  # b's highest benign value: 1 of 4 >= it
    assert calibrate(combined, np.arange(4), None, 0.0) > scores[:4].max()
    with pytest.raises(UsageError, match="benign_components"):
        combined.fit_scores([np.zeros(3)])
    with pytest.raises(UsageError, match="CombinedScore"):
        CombinedScore([a]).combine([np.zeros(2)])


def test_detector_score_keeps_the_detector_threshold_unless_given():
    class Detector:
        threshold = 0.7

        def score(self, images):
            return np.asarray(images, np.float32) / 10

    score = DetectorScore(Detector())
    assert score.threshold == 0.7 and DetectorScore(Detector(), 0.2).threshold == 0.2
    np.testing.assert_allclose(score.score([1, 9], None), [0.1, 0.9], rtol=1e-6)


@pytest.mark.slow
def test_detector_training_augments_both_sets_when_asked(monkeypatch, tmp_path):
    """`DetectorConfig(augment=...)` sends the fit images of both sets through
    `detector.evasion.augment` (held-out benign images stay clean for the calibration)."""
    from detector import training
    from detector.config import DetectorConfig
    from tests.detector.conftest import TINY_CNN, as_dataset, attack_images, benign_images

    calls = []
    real = training.augment

    def spy(images, *, seed, share, then_jpeg):
        calls.append((len(images), share, then_jpeg))
        return real(images, seed=seed, share=share, then_jpeg=then_jpeg)

    monkeypatch.setattr(training, "augment", spy)
    config = DetectorConfig(benign="b", attack="a", out=str(tmp_path / "d" / "1"),
                            arch_args=TINY_CNN, epochs=1, batch_size=16, augment=1.0,
                            augment_jpeg=1.0, jpeg_augment=0.0)
    result = training.train_detector(config, benign=as_dataset(benign_images(40, 0), "b"),
                                     attack=as_dataset(attack_images(40, 1), "a"),
                                     export=False)
    assert calls == [(34, 1.0, 1.0), (34, 1.0, 1.0)]
    assert result.calibration["config"]["augment"] == 1.0
    assert result.calibration["config"]["augment_jpeg"] == 1.0
    with pytest.raises(UsageError, match="`augment`"):
        DetectorConfig(benign="b", attack="a", out=str(tmp_path / "d" / "1"), augment=1.5)


def test_gaussian_smoothing_keeps_flat_images_and_removes_noise():
    """The detector's in-model blur (`DetectorConfig.smooth`): normalised, border-safe,
    serialisable, and it takes pixel noise away."""
    import keras

    from detector.training import GaussianSmoothing, gaussian_kernel

    kernel = gaussian_kernel(1.0)
    assert kernel.shape == (5, 5) and kernel.sum() == pytest.approx(1.0)
    layer = GaussianSmoothing(1.0)
    flat = np.full((2, 8, 8, 3), 100.0, np.float32)
    np.testing.assert_allclose(np.asarray(layer(flat)), flat, rtol=1e-5)  # borders too
    rng = np.random.default_rng(0)
    noisy = (100.0 + rng.normal(0, 10, (2, 16, 16, 3))).astype(np.float32)
    out = np.asarray(layer(noisy))
    assert out.shape == noisy.shape and out.std() < noisy.std() / 2
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(again, GaussianSmoothing) and again.sigma == 1.0
