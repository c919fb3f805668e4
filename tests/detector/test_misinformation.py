"""Adaptive Misinformation on hand-made scores: the switch, the blend, label-only answers."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import UsageError
from detector.misinformation import (
    AdaptiveMisinformation,
    MisinformationConfig,
    SwitchConfig,
    reverse_distribution,
    switch_weight,
)

PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]], np.float32)


def test_switch_is_half_at_tau_and_saturates():
    a = switch_weight(np.array([0.2, 0.5, 0.8]), tau=0.5, nu=50.0)
    assert a[1] == pytest.approx(0.5)
    assert a[0] < 1e-6 and a[2] > 1 - 1e-6
    # steepness: a smaller nu gives a softer switch at the same distance from tau
    soft = switch_weight(np.array([0.6]), tau=0.5, nu=5.0)[0]
    assert soft == pytest.approx(1 / (1 + np.exp(-0.5)))
    extreme = switch_weight(np.array([-1e9, 1e9]), tau=0.0, nu=1e3)  # no overflow warning
    assert extreme[0] < 1e-300 and extreme[1] == 1.0


def test_reverse_distribution_reverses_the_ranking_and_keeps_the_values():
    m = reverse_distribution(PROBS)
    np.testing.assert_allclose(m[0], [0.1, 0.2, 0.7])
    np.testing.assert_allclose(m[1], [0.6, 0.3, 0.1])
    np.testing.assert_allclose(np.sort(m, axis=1), np.sort(PROBS, axis=1))
    assert np.all(m.argmax(1) != PROBS.argmax(1))


def test_blend_follows_the_formula_per_row():
    am = AdaptiveMisinformation(tau=0.5, nu=10.0)
    scores = np.array([0.0, 0.5, 1.0])
    out = am(PROBS, scores)
    a = 1 / (1 + np.exp(-10.0 * (scores - 0.5)))
    expected = (1 - a)[:, None] * PROBS + a[:, None] * reverse_distribution(PROBS)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-6)
    # in distribution: (almost) the victim's answer; far out: (almost) the misinformation
    assert out[0].argmax() == 0 and out[2].argmax() == 2


def test_threshold_decides_which_answer_dominates():
    am = AdaptiveMisinformation(tau=0.3, nu=200.0)
    below = am(PROBS, np.full(3, 0.25))
    above = am(PROBS, np.full(3, 0.35))
    np.testing.assert_allclose(below, PROBS, atol=1e-3)
    np.testing.assert_allclose(above, reverse_distribution(PROBS), atol=1e-3)


def test_model_answers_are_blended_and_required():
    am = AdaptiveMisinformation(tau=0.5, nu=50.0, function="model")
    mis = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # row 3 unnormalised
    out = am(PROBS, np.ones(3), mis)
    assert out.argmax(1).tolist() == [2, 0, 1]
    with pytest.raises(UsageError, match="misinformation"):
        am(PROBS, np.ones(3))
    with pytest.raises(UsageError, match="shape"):
        am(PROBS, np.ones(3), mis[:, :2])


def test_label_only_answers_are_the_misinformation_top1_past_the_threshold():
    am = AdaptiveMisinformation(tau=0.5, nu=50.0)
    out = am(PROBS, np.array([0.1, 0.5, 0.9]), label_only=True)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.sum(1), 1.0)
    assert np.count_nonzero(out, axis=1).tolist() == [1, 1, 1]
    # row 0 in distribution: victim's top-1; rows 1 and 2 at/above tau: misinformation's top-1
    assert out.argmax(1).tolist() == [0, 0, 2]


def test_bad_arguments_name_the_argument():
    with pytest.raises(UsageError, match="`nu`"):
        AdaptiveMisinformation(tau=0.5, nu=0.0)
    with pytest.raises(UsageError, match="`function`"):
        AdaptiveMisinformation(tau=0.5, function="random")
    with pytest.raises(UsageError, match="`scores`"):
        AdaptiveMisinformation(tau=0.5)(PROBS, np.ones(2))
    with pytest.raises(UsageError, match="`probs`"):
        AdaptiveMisinformation(tau=0.5)(np.array([[np.nan, 1.0]]), np.ones(1))


def test_training_config_checks_before_any_work(tmp_path):
    with pytest.raises(UsageError, match="`out`"):
        MisinformationConfig(data="x", out=str(tmp_path))  # exists
    with pytest.raises(UsageError, match="`out`"):
        MisinformationConfig(data="x", out=str(tmp_path / "mis" / "latest"))
    with pytest.raises(UsageError, match="`epochs`"):
        MisinformationConfig(data="x", out=str(tmp_path / "mis" / "1"), epochs=0)


def test_switch_config_is_what_the_gateway_policy_embeds():
    assert SwitchConfig() == SwitchConfig(tau=None, nu=50.0, function="reverse")
    with pytest.raises(UsageError, match="`path`.*exactly one of"):
        SwitchConfig(function="model")
    with pytest.raises(UsageError, match="`function`.*'model' when"):
        SwitchConfig(path="m/1")
    with pytest.raises(UsageError, match="`function`.*one of 'reverse', 'model'"):
        SwitchConfig(function="shuffle")
    with pytest.raises(UsageError, match="`tau`"):
        SwitchConfig(tau=float("inf"))
