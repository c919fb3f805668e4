"""Tests of the evaluation measures on hand-computed arrays, and of the prefix curve."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attack.evaluate import (
    Evaluation,
    accuracy,
    default_budgets,
    evaluate,
    fidelity,
    per_class_accuracy,
    per_class_agreement,
    poor_classes,
    prefix_curve,
    top1,
    uniform_noise_images,
)
from common.errors import UsageError


def one_hot(labels, k=3):
    return np.eye(k, dtype=np.float32)[np.asarray(labels)]


def test_accuracy_fidelity_and_per_class_on_hand_computed_cases():
    labels = np.array([0, 1, 2, 2, 1])
    pred = np.array([0, 1, 1, 2, 0])
    assert accuracy(pred, labels) == pytest.approx(3 / 5)
    assert accuracy(one_hot(pred), labels) == pytest.approx(3 / 5)  # scores: argmax
    a = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    b = np.array([[2.0, 1.0, 0.0], [0.0, -1.0, 3.0], [0.0, 0.0, 9.0], [1.0, 0.0, 0.0]])
    assert fidelity(a, b) == pytest.approx(3 / 4)  # probabilities vs logits: top-1 only
    assert fidelity(a, np.array([0, 1, 2, 0])) == 1.0
    assert per_class_accuracy(pred, labels, ["a", "b", "c"]) == {"a": 1.0, "b": 0.5, "c": 0.5}
    assert per_class_accuracy([0], [0], ["a", "b"]) == {"a": 1.0, "b": None}
    assert accuracy([], []) is None and fidelity(np.zeros((0, 3)), np.zeros((0, 3))) is None


def test_per_class_agreement_and_poor_classes_on_hand_made_predictions():
    # class 0: the victim right, the surrogate wrong; class 1: the victim mostly wrong and the
    # surrogate copying it exactly; class 2: both right; class 3: no test image
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    victim = np.array([0, 0, 0, 1, 2, 2, 2, 1, 2, 2])
    surrogate = np.array([1, 1, 0, 1, 2, 2, 2, 1, 2, 0])
    names = ["a", "b", "c", "d"]
    agreement = per_class_agreement(surrogate, one_hot(victim, 4), labels, names)
    assert agreement == {"a": 0.5, "b": 1.0, "c": 0.5, "d": None}
    assert per_class_agreement(victim, victim, labels, names) == {"a": 1.0, "b": 1.0, "c": 1.0,
                                                                  "d": None}
    per_victim = per_class_accuracy(victim, labels, names)
    per_surrogate = per_class_accuracy(surrogate, labels, names)
    assert per_victim == {"a": 0.75, "b": 0.25, "c": 1.0, "d": None}
    assert per_surrogate == {"a": 0.25, "b": 0.25, "c": 0.5, "d": None}
    # b fails by accuracy only because the victim does: the surrogate agrees with it everywhere
    assert poor_classes(per_victim, per_surrogate, agreement) == {
        "accuracy": ["a", "b"], "agreement": [], "victim_too": ["b"]}
    assert poor_classes(per_victim, per_surrogate, agreement, threshold=0.6) == {
        "accuracy": ["a", "b", "c"], "agreement": ["a", "c"], "victim_too": ["b"]}
    assert poor_classes(per_victim, per_surrogate, {})["agreement"] is None  # not measured
    with pytest.raises(UsageError, match="`b`.*rows"):
        per_class_agreement([0, 1], [0], [0, 1], names)
    with pytest.raises(UsageError, match="`labels`.*one per class name"):
        per_class_agreement([0, 1], [0, 1], [0, 4], names)


def test_measures_reject_mismatched_or_malformed_inputs():
    with pytest.raises(UsageError, match="`labels`.*3 rows"):
        accuracy([0, 1], [0, 1, 2])
    with pytest.raises(UsageError, match="`b_probs`"):
        fidelity(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(UsageError, match="`scores`"):
        top1(np.zeros((2, 3, 4)))
    with pytest.raises(UsageError, match="integer class labels"):
        top1(np.array([0.5, 1.0]))
    with pytest.raises(UsageError, match="`labels`.*one per class name"):
        per_class_accuracy([0, 3], [0, 3], ["a", "b"])


def test_uniform_noise_images_are_seeded_uint8_and_cover_the_range():
    images = uniform_noise_images(50, (8, 8, 3), seed=4)
    assert images.shape == (50, 8, 8, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, uniform_noise_images(50, (8, 8, 3), seed=4))
    assert not np.array_equal(images, uniform_noise_images(50, (8, 8, 3), seed=5))
    assert images.min() == 0 and images.max() == 255
    assert abs(images.mean() - 127.5) < 3
    with pytest.raises(UsageError, match="`shape`"):
        uniform_noise_images(1, (8, 8), seed=0)
    with pytest.raises(UsageError, match="`n`"):
        uniform_noise_images(-1, (8, 8, 3), seed=0)


def colour_predict(images):
    """A 'surrogate' that predicts the brightest channel of each image."""
    return images.reshape(len(images), -1, 3).mean(axis=1)


def test_evaluate_computes_every_number_and_serialises():
    test_images = np.zeros((4, 2, 2, 3), np.uint8)
    for i, c in enumerate([0, 1, 2, 2]):
        test_images[i, :, :, c] = 200
    test_labels = np.array([0, 1, 2, 1])  # the surrogate (brightest channel) gets 3 of 4
    victim = one_hot([0, 1, 1, 1])  # victim right on 0, 1, 3 -> 3/4; agrees with surrogate 2/4
    heldout_images = test_images[:2]
    noise_images = test_images[2:]
    result = evaluate(colour_predict, victim, test_labels, test_images=test_images,
                      transfer_heldout=(heldout_images, one_hot([0, 2])),
                      noise=(noise_images, one_hot([2, 2])), class_names=["r", "g", "b"],
                      n_queries=123)
    assert result.victim_acc == pytest.approx(0.75)
    assert result.surrogate_acc == pytest.approx(0.75)
    assert result.ratio == pytest.approx(1.0)
    assert result.fidelity_test == pytest.approx(0.5)
    assert result.fidelity_transfer_heldout == pytest.approx(0.5)
    assert result.fidelity_noise == pytest.approx(1.0)
    assert result.per_class_victim == {"r": 1.0, "g": 1.0, "b": 0.0}
    assert result.per_class_surrogate == {"r": 1.0, "g": 0.5, "b": 1.0}
    assert result.per_class_agreement == {"r": 1.0, "g": 0.5, "b": 0.0}  # by true class
    assert (result.n_queries, result.n_test, result.n_transfer_heldout, result.n_noise) == \
        (123, 4, 2, 2)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["fidelity_noise"] == 1.0 and data["per_class_surrogate"]["g"] == 0.5
    assert data["per_class_agreement"] == {"r": 1.0, "g": 0.5, "b": 0.0}
    assert not {"per_class_victim", "per_class_agreement"} & set(result.headline())
    with pytest.raises(AttributeError):
        result.victim_acc = 0.0  # frozen

    bare = evaluate(colour_predict, victim, test_labels, test_images=test_images)
    assert bare.fidelity_transfer_heldout is None and bare.fidelity_noise is None
    assert list(bare.per_class_surrogate) == ["0", "1", "2"]
    zero = evaluate(colour_predict, one_hot([1, 0, 0, 0]), test_labels, test_images=test_images)
    assert zero.victim_acc == 0.0 and zero.ratio is None


def test_evaluate_rejects_mismatched_inputs():
    images = np.zeros((4, 2, 2, 3), np.uint8)
    with pytest.raises(UsageError, match="`test_images`"):
        evaluate(colour_predict, one_hot([0, 1, 2, 0]), [0, 1, 2, 0], test_images=images[:3])
    with pytest.raises(UsageError, match="`noise"):
        evaluate(colour_predict, one_hot([0, 1, 2, 0]), [0, 1, 2, 0], test_images=images,
                 noise=(images, one_hot([0])))
    with pytest.raises(UsageError, match="`surrogate_predict`.*one per image"):
        evaluate(lambda x: np.zeros((1, 3)), one_hot([0, 1, 2, 0]), [0, 1, 2, 0],
                 test_images=images)


def test_default_budgets_halve_down_from_the_total():
    assert default_budgets(10000, 5) == [625, 1250, 2500, 5000, 10000]
    assert default_budgets(3, 5) == [1, 3]
    assert default_budgets(7, 1) == [7]
    with pytest.raises(UsageError, match="`total`"):
        default_budgets(0)


def test_prefix_curve_trains_per_budget_reuses_done_points_and_reports_each():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 100)
    images = np.zeros((100, 2, 2, 3), np.uint8)
    images[np.arange(100), :, :, labels] = 200
    victim = one_hot(labels)
    trained: list[int] = []

    def train_fn(budget):
        trained.append(budget)
        # A 'surrogate' right on the first `budget` test images, wrong (class 0 -> 1...) after.
        def predict(x):
            predicted = np.argmax(colour_predict(x), axis=1)
            if len(x) == len(images):
                predicted[budget:] = (predicted[budget:] + 1) % 3
            return one_hot(predicted)
        return predict

    seen: list[dict] = []
    curve = prefix_curve([100, 25, 50], train_fn, victim_probs_test=victim, test_labels=labels,
                         test_images=images, noise=(images[:10], victim[:10]),
                         on_point=seen.append)
    assert trained == [25, 50, 100]  # ascending
    assert [p["queries"] for p in curve] == [25, 50, 100]
    assert [p["surrogate_acc"] for p in curve] == pytest.approx([0.25, 0.5, 1.0])
    assert [p["fidelity_test"] for p in curve] == pytest.approx([0.25, 0.5, 1.0])
    assert all(p["victim_acc"] == 1.0 and p["fidelity_noise"] == 1.0 for p in curve)
    assert all(p["n_queries"] == p["queries"] and p["seconds"] >= 0 for p in curve)
    assert seen == curve
    json.dumps(curve)

    trained.clear()
    resumed = prefix_curve([25, 50, 100], train_fn, victim_probs_test=victim,
                           test_labels=labels, test_images=images, completed=curve[:2])
    assert trained == [100] and resumed[:2] == curve[:2]
    assert resumed[2]["fidelity_noise"] is None  # no noise this time
    for bad in ([], [0, 5], [5, 5]):
        with pytest.raises(UsageError, match="`budgets`"):
            prefix_curve(bad, train_fn, victim_probs_test=victim, test_labels=labels,
                         test_images=images)


def test_evaluation_defaults_keep_optional_numbers_empty():
    result = Evaluation(victim_acc=0.9, surrogate_acc=0.45, ratio=0.5, fidelity_test=0.5)
    assert result.fidelity_noise is None and result.per_class_victim == {}
    assert result.to_dict()["n_queries"] is None
