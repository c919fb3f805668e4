"""The synthetic thief's class-balanced final pass (``--final-balance``, `balanced_rows`).

On hand-made answers (no TensorFlow): 0 keeps every answer once, 1 draws every answered class
alike, the draw is seeded, and the setting is one a resume may change (the final pass is
trained again, no query sent).
"""

from __future__ import annotations

import numpy as np
import pytest

from attack.synthetic import FINAL_PASS_FIELDS, SyntheticConfig, balanced_rows


def _answers(counts: list[int]) -> np.ndarray:
    """One-hot-ish answers: counts[c] rows whose top-1 is class c, in class order."""
    top = np.repeat(np.arange(len(counts)), counts)
    probs = np.full((len(top), len(counts)), 0.1 / len(counts), np.float32)
    probs[np.arange(len(top)), top] += 0.9
    return probs


def test_zero_keeps_every_answer_once():
    probs = _answers([30, 5, 0, 1])
    np.testing.assert_array_equal(balanced_rows(probs, 0.0, seed=0), np.arange(36))


@pytest.mark.parametrize("power, share", [(1.0, 0.5), (0.5, 0.25)])
def test_balance_draws_the_rare_classes_more(power, share):
    probs = _answers([900, 100])
    rows = balanced_rows(probs, power, seed=1)
    assert len(rows) == 1000 and (np.diff(rows) >= 0).all()  # as many, sorted
    rare = (probs[rows].argmax(axis=1) == 1).mean()
    assert abs(rare - share) < 0.05, rare  # 1: 1/2 each; 0.5: weights 1/30 vs 1/10 -> 1/4
    np.testing.assert_array_equal(rows, balanced_rows(probs, power, seed=1))
    assert not np.array_equal(rows, balanced_rows(probs, power, seed=2))


def test_final_balance_is_a_final_pass_setting_in_range():
    assert "final_balance" in FINAL_PASS_FIELDS and "epochs" in FINAL_PASS_FIELDS
    assert SyntheticConfig(final_balance=1.0).final_balance == 1.0
    for bad in (-0.5, 1.5):
        with pytest.raises(ValueError, match="final_balance"):
            SyntheticConfig(final_balance=bad)
