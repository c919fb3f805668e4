"""The per-client sliding window: share over the last `window` verdicts, level, minimum count."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import UsageError
from detector.aggregate import SlidingWindow


def test_flags_once_the_share_reaches_the_level_and_the_minimum_is_met():
    window = SlidingWindow(window=10, level=0.5, min_queries=4)
    state = window.new_state()
    assert window.update(state, [True, True, True]) == (False, 1.0)  # only 3 queries
    flagged, share = window.update(state, [True])
    assert flagged and share == 1.0 and state["flagged_at"] == 4


def test_the_window_slides_and_forgets_old_verdicts():
    window = SlidingWindow(window=4, level=0.5, min_queries=1)
    state = window.new_state()
    window.update(state, np.ones(4, bool))
    flagged, share = window.update(state, np.zeros(3, bool))
    assert share == 0.25 and not flagged
    assert state["bits"] == [1, 0, 0, 0] and state["queries"] == 7
    assert state["flagged_queries"] == 4 and state["flagged_at"] == 1


def test_flagged_at_is_exact_inside_a_batch():
    window = SlidingWindow(window=8, level=0.5, min_queries=4)
    state = window.new_state()
    verdicts = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0], bool)
    window.update(state, verdicts)
    # After query 8 the window [0,0,0,0,1,1,1,1] has share 0.5 for the first time.
    assert state["flagged_at"] == 8
    one_by_one = window.new_state()
    for v in verdicts:
        window.update(one_by_one, [v])
    assert one_by_one == state


def test_state_is_json_serialisable_and_survives_a_round_trip():
    window = SlidingWindow(window=16, level=0.3, min_queries=8)
    state = window.new_state()
    rng = np.random.default_rng(0)
    window.update(state, rng.random(20) < 0.2)
    restored = json.loads(json.dumps(state))
    assert restored == state
    more = rng.random(5) < 0.9
    assert window.update(state, more) == window.update(restored, more)
    assert restored == state and restored["queries"] == 25


def test_benign_rate_stays_unflagged_and_attack_rate_is_flagged_fast():
    rng = np.random.default_rng(1)
    window = SlidingWindow(window=256, level=0.5, min_queries=64)
    benign = window.new_state()
    for _ in range(40):
        flagged, _ = window.update(benign, rng.random(100) < 0.05)
        assert not flagged
    attack = window.new_state()
    window.update(attack, rng.random(1000) < 0.95)
    assert attack["flagged_at"] == 64


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"level": 0.0}, {"level": 1.5},
                                    {"min_queries": 0}, {"window": 8, "min_queries": 9},
                                    {"window": True}])
def test_bad_parameters(kwargs):
    with pytest.raises(UsageError):
        SlidingWindow(**{"window": 16, "level": 0.5, "min_queries": 4, **kwargs})


def test_bad_verdicts_and_state():
    window = SlidingWindow(8, 0.5, 2)
    with pytest.raises(UsageError, match="verdicts"):
        window.update(window.new_state(), np.ones((2, 2), bool))
    with pytest.raises(UsageError, match="verdicts"):
        window.update(window.new_state(), np.array([0.5]))
    with pytest.raises(UsageError, match="state"):
        window.update({"x": 1}, [True])
