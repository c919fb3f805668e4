"""The detector-side monitor the gateway calls: watches (a score, a threshold, a per-client
window), PRADA, the state it keeps (the gateway's layout), plugged-in scorers and windows, and
scores passed in by the caller for a detector it serves elsewhere."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from common.errors import UsageError
from detector.aggregate import SlidingWindow
from detector.monitor import Decision, DetectorScore, Monitor, Watch
from detector.ood import OODConfig
from detector.prada import Prada, PradaConfig


def State(**fields) -> SimpleNamespace:  # noqa: N802 - stands for the gateway's DetectorState
    """A client's detector state as the gateway stores it."""
    return SimpleNamespace(**{"ood": None, "prada": None, "flagged": False, "flagged_by": "",
                              **fields})


class Brightness:
    """Mean pixel / 255: bright images are 'out of distribution'."""

    threshold = 0.5

    def score(self, images, probabilities=None):
        return images.reshape(len(images), -1).mean(axis=1) / 255.0


class Unsure:
    """One minus the top probability of the victim's answer (a max-softmax score)."""

    threshold = 0.5

    def score(self, images, probabilities):
        return 1.0 - np.max(probabilities, axis=1)


def bright(n, seed=0):
    return np.random.default_rng(seed).integers(200, 256, (n, 8, 8, 3), dtype=np.uint8)


def dark(n, seed=0):
    return np.random.default_rng(seed).integers(0, 60, (n, 8, 8, 3), dtype=np.uint8)


def confident(n, k=4):
    return np.eye(k, dtype=np.float32)[np.arange(n) % k]


def test_a_watch_flags_after_min_queries_and_keeps_the_gateway_state_layout():
    monitor = Monitor([Watch("ood", Brightness(), SlidingWindow(8, 0.5, 4))])
    state = State()
    first = monitor.observe(state, bright(3), confident(3), client="c")
    assert not first.flagged and first.newly == ()
    assert first.verdicts == {"ood_attack_queries": 3, "ood_share": 1.0, "flagged": False}
    assert state.ood["queries"] == 3 and state.ood["bits"] == [1, 1, 1]
    second = monitor.observe(state, bright(1), confident(1), client="c")
    assert second.flagged and second.newly == ("ood",) and state.flagged_by == "ood"
    np.testing.assert_allclose(second.scores["ood"], Brightness().score(bright(1)))
    # the flag sticks; a later batch is not "newly" flagged again
    third = monitor.observe(state, dark(4), confident(4), client="c")
    assert third.flagged and third.newly == ()


def test_plugged_in_scorer_and_window_keep_their_state_under_watches():
    monitor = Monitor([Watch("ood", Brightness(), SlidingWindow(8, 0.5, 4)),
                       Watch("unsure", Unsure(), SlidingWindow(8, 0.5, 2))])
    state = State()
    vague = np.full((2, 4), 0.25, np.float32)
    decision = monitor.observe(state, dark(2), vague, client="c")
    assert decision.newly == ("unsure",) and state.flagged_by == "unsure"
    assert decision.verdicts["unsure_attack_queries"] == 2
    assert decision.verdicts["ood_attack_queries"] == 0
    assert state.ood["watches"]["unsure"]["queries"] == 2 and state.ood["queries"] == 2
    assert set(decision.seconds) == {"ood", "unsure"}


def test_a_watch_without_scorer_takes_the_callers_scores():
    monitor = Monitor.from_configs(OODConfig(upstream_model="served", threshold=0.5, window=4,
                                             min_queries=2))
    assert monitor.needs_scores() == ("ood",)
    state = State()
    with pytest.raises(UsageError, match="scores"):
        monitor.observe(state, dark(2), None)
    with pytest.raises(UsageError, match="one per image"):
        monitor.observe(state, dark(2), None, scores={"ood": np.zeros(3)})
    # the threshold is compared in float64: a score just above it in float32 is not rounded
    just = np.nextafter(np.float32(0.5), np.float32(1.0))
    decision = monitor.observe(state, dark(2), None, scores={"ood": np.array([just, 0.1])})
    assert decision.verdicts["ood_attack_queries"] == 1 and "ood" not in decision.seconds


def test_prada_flags_a_synthetic_stream_and_reuses_its_live_state():
    monitor = Monitor(prada=Prada(PradaConfig(delta=0.95, min_samples=20, max_set=500)))
    rng = np.random.default_rng(0)
    seed_image = rng.integers(60, 200, (1, 8, 8, 3))
    state = State()
    for step in range(12):
        noise = rng.choice([-2, 2], size=(16, 8, 8, 3))
        batch = np.clip(seed_image + noise * (1 + step % 2), 0, 255).astype(np.uint8)
        decision = monitor.observe(state, batch, confident(16), client="jbda")
    assert state.flagged and state.flagged_by == "prada"
    assert decision.verdicts["prada_statistic"] < 0.95
    # the bytes written last time come back: the live arrays are reused, not decoded
    blob = state.prada
    assert monitor._prada_live["jbda"][0] is blob
    again = State(prada=Prada.dumps(Prada.loads(blob)))  # other bytes: decoded
    monitor.observe(again, dark(2), confident(2), client="jbda")
    assert Prada.loads(again.prada)["queries"] == Prada.loads(blob)["queries"] + 2


def test_nothing_to_watch_without_images_and_prada_waits_for_an_answer():
    monitor = Monitor([Watch("ood", Brightness(), SlidingWindow(8, 0.5, 1))],
                      prada=Prada(min_samples=3))
    state = State()
    assert monitor.observe(state, None, None) == Decision(False, verdicts={"flagged": False})
    assert monitor.observe(state, np.zeros((0, 8, 8, 3), np.uint8), None).verdicts == \
        {"flagged": False}
    decision = monitor.observe(state, dark(2), None)  # no class scores: PRADA skips the batch
    assert "prada_statistic" not in decision.verdicts and state.prada is None


def test_from_configs_loads_nothing_it_is_given_and_checks_its_watches():
    detector = Brightness()
    monitor = Monitor.from_configs(OODConfig(path="unused", window=8, min_queries=4),
                                   PradaConfig(max_distances=300, outlier_std=None),
                                   detector=detector)
    assert monitor.names == ("ood", "prada") and monitor.needs_scores() == ()
    assert isinstance(monitor.watch("ood").scorer, DetectorScore)
    assert monitor.prada.max_distances == 300 and monitor.prada.outlier_std is None
    with pytest.raises(UsageError, match="distinct names"):
        Monitor([Watch("ood", detector, SlidingWindow()), Watch("ood", detector, SlidingWindow())])
    with pytest.raises(UsageError, match="`threshold`"):
        Watch("served", None, SlidingWindow())


@pytest.mark.parametrize("kwargs, field", [
    ({"window": 10}, "`path`"),
    ({"path": "x", "upstream_model": "y"}, "`path`"),
    ({"upstream_model": "y"}, "`threshold`"),
    ({"path": "x", "min_queries": 99, "window": 10}, "`min_queries`"),
    ({"path": "x", "level": 0}, "`level`"),
    ({"path": "x", "threshold": 1.5}, "`threshold`"),
])
def test_ood_config_names_the_field(kwargs, field):
    with pytest.raises(UsageError, match=field):
        OODConfig(**kwargs)


def test_prada_config_is_the_detectors_own():
    with pytest.raises(UsageError, match="`delta`.*a number in \\(0, 1\\)"):
        PradaConfig(delta=1.0)
    with pytest.raises(UsageError, match="`max_distances`"):
        PradaConfig(min_samples=50, max_distances=10)
    assert Prada(PradaConfig(delta=0.8), min_samples=5).config == PradaConfig(0.8, 5)
    with pytest.raises(TypeError, match="deltta"):
        Prada(deltta=0.8)
