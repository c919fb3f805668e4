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


# -- BinomialWindow: the OOD share against chance at the benign false-positive rate ----------

def _tail(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) >= k), summed exactly."""
    import math

    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_binomial_critical_counts_are_the_exact_tail_bound():
    from detector.aggregate import binomial_critical_counts

    counts = binomial_critical_counts(300, 0.02, 1e-6)
    for n in (1, 10, 32, 64, 256, 300):
        c = int(counts[n])
        assert c == n + 1 or _tail(c, n, 0.02) <= 1e-6  # P(X >= c) <= alpha
        assert _tail(c - 1, n, 0.02) > 1e-6              # and c is the smallest such
    assert counts[64] == 10 and counts[256] == 20 and counts[1] == 2


def test_binomial_window_flags_camouflage_that_the_level_never_flags():
    from detector.aggregate import BinomialWindow

    rng = np.random.default_rng(2)
    # A thief mixing 75% in-distribution images: per-query detection 0.9 on its own images,
    # the benign rate 0.02 on the camouflage.
    is_attack = rng.random(2000) < 0.25
    verdicts = np.where(is_attack, rng.random(2000) < 0.9, rng.random(2000) < 0.02)
    level = SlidingWindow(256, 0.5, 64)
    state = level.new_state()
    level.update(state, verdicts)
    assert state["flagged_at"] is None
    binomial = BinomialWindow(256, fpr=0.02, alpha=1e-6, min_queries=32)
    state = binomial.new_state()
    flagged, share = binomial.update(state, verdicts)
    assert flagged and 32 <= state["flagged_at"] <= 80 and 0.15 < share < 0.35


def test_binomial_window_leaves_benign_clients_at_the_calibrated_rate_alone():
    from detector.aggregate import BinomialWindow

    rng = np.random.default_rng(3)
    window = BinomialWindow(256, fpr=0.02, alpha=1e-6, min_queries=32)
    for _ in range(20):  # 20 clients x 2,000 queries at the calibrated rate
        state = window.new_state()
        for _ in range(20):
            window.update(state, rng.random(100) < 0.02)
        assert state["flagged_at"] is None
    # ... while a client at three times that rate is caught.
    state = window.new_state()
    window.update(state, rng.random(2000) < 0.08)
    assert state["flagged_at"] is not None


def test_binomial_window_is_exact_inside_a_batch_and_keeps_the_state_shape():
    from detector.aggregate import BinomialWindow

    window = BinomialWindow(window=16, fpr=0.05, alpha=0.01, min_queries=4)
    # critical counts: 4 flagged queries out of 4..16 are past the 1% tail at rate 0.05
    verdicts = np.array([0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0], bool)
    state = window.new_state()
    window.update(state, verdicts)
    one_by_one = window.new_state()
    for v in verdicts:
        window.update(one_by_one, [v])
    assert one_by_one == state
    expected = next(n for n in range(4, 12)
                    if verdicts[:n].sum() >= window.critical[n])
    assert state["flagged_at"] == expected
    assert set(state) == set(SlidingWindow().new_state())
    assert json.loads(json.dumps(state)) == state


@pytest.mark.parametrize("kwargs", [{"fpr": 0.0}, {"fpr": 1.0}, {"alpha": 0.0},
                                    {"window": 8, "min_queries": 9}, {"min_queries": True}])
def test_binomial_window_bad_parameters(kwargs):
    from detector.aggregate import BinomialWindow

    with pytest.raises(UsageError):
        BinomialWindow(**{"window": 16, "fpr": 0.02, "alpha": 1e-3, "min_queries": 4, **kwargs})


def test_first_flag_replays_a_stream_in_requests():
    from detector.aggregate import first_flag

    window = SlidingWindow(window=8, level=0.5, min_queries=4)
    verdicts = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0], bool)
    assert first_flag(window, verdicts, batch=3) == 8  # exact inside the third request
    assert first_flag(window, np.zeros(50, bool), batch=16) is None


def test_the_policy_section_can_ask_for_the_binomial_window():
    from detector.aggregate import BinomialWindow
    from detector.monitor import Monitor
    from detector.ood import OODConfig
    from serving.gateway.config import policy_from_dict

    class Detector:
        threshold = 0.8
        calibration = {"target_fpr": 0.02}

        def score(self, images):
            return np.zeros(len(images))

    monitor = Monitor.from_configs(OODConfig(path="d", aggregate="binomial", min_queries=32),
                                   detector=Detector())
    window = monitor.watch("ood").window
    assert isinstance(window, BinomialWindow) and window.fpr == 0.02 and window.alpha == 1e-6
    policy = policy_from_dict({"detectors": {"ood": {"path": "d", "aggregate": "binomial",
                                                     "fpr": 0.04, "alpha": 1e-4}}})
    window = Monitor.from_configs(policy.ood, detector=Detector()).watch("ood").window
    assert (window.fpr, window.alpha) == (0.04, 1e-4)
    assert type(Monitor.from_configs(OODConfig(path="d"), detector=Detector())
                .watch("ood").window) is SlidingWindow
    with pytest.raises(UsageError, match="`fpr`"):
        OODConfig(upstream_model="m", threshold=0.8, aggregate="binomial")
    with pytest.raises(UsageError, match="aggregate"):
        OODConfig(path="d", aggregate="mean")
