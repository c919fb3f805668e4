"""Tests for attack.strategies: the rewards on hand-computed cases, their finiteness on extreme
answers (one-hot, zeros, NaN, -inf log-probabilities; a hypothesis property over random simplex
rows), the gradient bandit learning a 2-leaf toy problem, the random strategy (no repeats,
exhaustion, resume), the adaptive strategy (masking, exhaustion, state round trip, errors), and
ActiveThief's active strategies on hand-made pools (k-center picks the farthest points, entropy
the most uncertain, DFAL on a linear Keras model the points nearest its decision boundary; the
state round trip)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from attack.hierarchy import Hierarchy
from attack.strategies import (
    ActiveStrategy,
    AdaptiveStrategy,
    HierarchicalBandit,
    RandomStrategy,
    RunningStats,
    TransferSetExhausted,
    certainty_reward,
    deepfool_distances,
    diversity_reward,
    entropy,
    k_center_greedy,
    loss_reward,
    uncertainty_order,
)
from common.errors import UsageError

LOG_EPS = 16.11809565095832  # -log(1e-7), the loss reward's ceiling


def two_level_tree() -> Hierarchy:
    """animals {cat, dog, cow} and vehicles {car, van}."""
    return Hierarchy.from_parents(
        ["cat", "dog", "cow", "car", "van"],
        {"cat": "animal", "dog": "animal", "cow": "animal", "car": "vehicle", "van": "vehicle",
         "animal": "thing", "vehicle": "thing"})


def finite(value) -> bool:
    return bool(np.isfinite(np.asarray(value, dtype=np.float64)).all())


# ------------------------------------------------------------------------------------ rewards


def test_certainty_reward_by_hand():
    y = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25] * 4 + [0.0] * 0, [0, 0, 1]]
    np.testing.assert_allclose(certainty_reward(np.array(y[:2])), [0.5, 0.3])
    assert certainty_reward(np.array([y[2]]))[0] == 0.0
    assert certainty_reward(np.array([y[3]]))[0] == 1.0
    np.testing.assert_allclose(certainty_reward(np.array([[2.0, 1.0, 1.0]])), [0.25])  # renorm.
    assert certainty_reward(np.array([[np.nan, 1.0, 0.0]]))[0] == 1.0
    assert certainty_reward(np.array([[1.0]]))[0] == 1.0  # a single class: top2 = 0


def test_diversity_reward_by_hand():
    y = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(diversity_reward(y, np.array([[0.2, 0.5, 0.3], [0.4, 0.4, 0.2]])),
                               [0.3, 0.6])
    np.testing.assert_allclose(diversity_reward(y, np.zeros(3)), [1.0, 1.0])
    np.testing.assert_allclose(diversity_reward(y[:1], y[0]), [0.0])
    with pytest.raises(UsageError, match="history_mean"):
        diversity_reward(y, np.zeros(4))


def test_loss_reward_by_hand():
    np.testing.assert_allclose(loss_reward([[1, 0, 0]], np.log([[0.5, 0.25, 0.25]])), [0.693147],
                               atol=1e-6)  # ln 2
    np.testing.assert_allclose(loss_reward([[0.5, 0.5]], np.log([[0.25, 0.75]])), [0.836988],
                               atol=1e-6)  # (ln 4 + ln 4/3) / 2
    np.testing.assert_allclose(loss_reward([[1, 0, 0]], [[2.0, 0.0, 0.0]]), [0.239545],
                               atol=1e-6)  # logits: ln(e^2 + 2) - 2
    np.testing.assert_allclose(loss_reward([[0, 1]], [[0.0, -np.inf]]), [LOG_EPS])
    np.testing.assert_allclose(loss_reward([[0, 1]], [[0.0, -1e30]]), [LOG_EPS])
    np.testing.assert_allclose(loss_reward([[0, 1]], [[0.0, -1e30]], eps=1e-3), [6.907755],
                               atol=1e-6)
    with pytest.raises(UsageError, match="surrogate_log_probs"):
        loss_reward([[0, 1]], [[0.0, 0.0, 0.0]])


def test_running_stats_by_hand():
    stats = RunningStats(floor=1e-3)
    assert stats.normalise(1.0) == 0.0  # std 0 -> floor, value == mean
    assert stats.normalise(2.0) == pytest.approx(1.0)  # mean 1.5, std 0.5
    assert stats.normalise(3.0) == pytest.approx(1.224745, abs=1e-6)  # mean 2, std sqrt(2/3)
    flat = RunningStats(floor=1e-3)
    assert [flat.normalise(5.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    tiny = RunningStats(floor=1e-3)
    tiny.normalise(0.0)
    assert tiny.normalise(1e-6) == pytest.approx(0.5e-6 / 1e-3)  # std 5e-7 floored at 1e-3
    with pytest.raises(UsageError, match="variance_floor"):
        RunningStats(floor=0.0)


simplex_rows = hnp.arrays(
    np.float64, st.tuples(st.integers(1, 4), st.integers(1, 6)),
    elements=st.one_of(st.just(0.0), st.floats(0.0, 1.0), st.just(1.0)),
).map(lambda a: a / np.where(a.sum(1, keepdims=True) > 0, a.sum(1, keepdims=True), 1.0))
log_prob_values = st.one_of(st.floats(-1e30, 50.0), st.just(-np.inf), st.just(np.nan),
                            st.just(-1e30), st.just(0.0))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), y=simplex_rows)
def test_rewards_are_finite_and_bounded(data, y):
    log_q = data.draw(hnp.arrays(np.float64, y.shape, elements=log_prob_values))
    mean = data.draw(hnp.arrays(np.float64, y.shape[1:], elements=st.floats(0.0, 1.0)))
    cert, div, loss = certainty_reward(y), diversity_reward(y, mean), loss_reward(y, log_q)
    assert finite(cert) and finite(div) and finite(loss)
    assert (cert >= 0).all() and (cert <= 1 + 1e-12).all()
    assert (div >= 0).all() and (div <= 1 + 1e-12).all()
    assert (loss >= 0).all() and (loss <= LOG_EPS + 1e-9).all()


@settings(max_examples=40, deadline=None)
@given(data=st.data(), rows=st.lists(simplex_rows, min_size=1, max_size=4))
def test_adaptive_updates_stay_finite(data, rows):
    k = rows[0].shape[1]
    strategy = AdaptiveStrategy(np.repeat(np.arange(5), 4), two_level_tree(), reward="all",
                                seed=0, lr=0.5)
    for y in rows:
        y = np.resize(y, (len(y), k))
        log_q = data.draw(hnp.arrays(np.float64, y.shape, elements=log_prob_values))
        info = strategy.update(strategy.select(len(y)), y, log_q)
        assert finite(info["reward"]) and finite(info["advantage"])
        assert all(finite(v) for v in info["rewards"].values())
        assert finite(info["policy"]["entropy"])
    assert finite(strategy.bandit.H) and finite(strategy.bandit.baseline)


@pytest.mark.parametrize("y, log_q", [
    (np.eye(3), np.log(np.full((3, 3), 1 / 3))),                  # one-hot answers
    (np.eye(3), np.where(np.eye(3) > 0, -np.inf, 0.0)),            # ... the surrogate says 0
    (np.array([[0.5, 0.5, 0.0]] * 3), np.full((3, 3), -1e30)),     # exact zeros, -1e30
    (np.full((3, 3), 1 / 3), np.full((3, 3), np.nan)),             # all equal, NaN log-probs
    (np.zeros((3, 3)), np.zeros((3, 3))),                          # nothing returned
    (np.array([[np.inf, 0.0, 0.0]] * 3), np.full((3, 3), np.inf)),  # inf everywhere
])
def test_extreme_answers_give_finite_rewards(y, log_q):
    strategy = AdaptiveStrategy(np.repeat(np.arange(5), 10), two_level_tree(), reward="all")
    for _ in range(4):  # the same extreme answer again and again: std 0 -> floor
        for i in range(3):  # batches of 1
            info = strategy.update(strategy.select(1), y[i:i + 1], log_q[i:i + 1])
            assert finite(info["reward"]) and finite(info["advantage"])
            assert all(finite(v) for v in info["rewards"].values())
    assert finite(strategy.bandit.H)


def test_single_class_transfer_set():
    strategy = AdaptiveStrategy(np.zeros(5, np.int64), Hierarchy.flat(["only"]), reward="all")
    for _ in range(4):
        info = strategy.update(strategy.select(1), np.array([[1.0]]), np.array([[0.0]]))
        assert finite(info["reward"]) and info["policy"]["top"] == [["only", 1.0]]
    info = strategy.update(strategy.select(1), np.array([[1.0]]), np.array([[0.0]]))
    assert strategy.remaining == 0 and info["policy"] == {"entropy": 0.0, "top": []}
    with pytest.raises(TransferSetExhausted):
        strategy.select(1)


# ------------------------------------------------------------------------------------- bandit


def test_bandit_learns_the_rewarding_leaf():
    bandit = HierarchicalBandit(Hierarchy.flat(["good", "bad"]), lr=0.1)
    rng = np.random.default_rng(0)
    alive = np.ones(3, dtype=bool)
    assert bandit.leaf_probabilities(alive).tolist() == [0.5, 0.5]
    for _ in range(200):
        walk = bandit.sample(rng, alive)
        bandit.update(walk, 1.0 if walk[-1][1] == 1 else 0.0)
    assert bandit.leaf_probabilities(alive)[0] > 0.9


def test_bandit_update_by_hand():
    bandit = HierarchicalBandit(two_level_tree(), lr=0.1)
    tree = bandit.hierarchy
    assert tree.names == ("thing", "animal", "cat", "dog", "cow", "vehicle", "car", "van")
    walk = [(0, 1, (1, 5)), (1, 3, (2, 3, 4))]  # thing -> animal -> dog
    assert bandit.update(walk, 2.0) == 2.0  # baseline 0 before the first reward
    # H[chosen] += 0.1 * 2 * (1 - pi), H[sibling] -= 0.1 * 2 * pi; pi = 1/2 then 1/3
    np.testing.assert_allclose(bandit.H, [0, 0.1, -2 / 30, 0.4 / 3, -2 / 30, -0.1, 0, 0])
    assert bandit.baseline == 2.0
    assert bandit.update([(0, 5, (1, 5))], 1.0) == -1.0  # advantage 1 - 2
    pi_vehicle = 1 / (1 + np.exp(0.2))
    assert bandit.H[5] == pytest.approx(-0.1 - 0.1 * (1 - pi_vehicle))
    assert bandit.H[1] == pytest.approx(0.1 + 0.1 * (1 - pi_vehicle))
    assert bandit.baseline == 1.5


def test_adaptive_strategy_learns_where_the_victim_is_certain():
    labels = np.repeat(np.arange(2), 200)
    strategy = AdaptiveStrategy(labels, Hierarchy.flat(["sure", "unsure"]), reward="cert",
                                lr=0.1, seed=3)
    for _ in range(40):
        index = strategy.select(4)
        y = np.where(labels[index, None] == 0, np.eye(3)[0], np.full(3, 1 / 3))
        info = strategy.update(index, y)
    assert info["policy"]["top"][0][0] == "sure" and info["policy"]["top"][0][1] > 0.9


def test_adaptive_rewards_and_steps_by_hand(caplog):
    caplog.set_level(logging.INFO, logger="attack.strategies")
    strategy = AdaptiveStrategy(np.array([0, 1, 0, 1]), Hierarchy.flat(["a", "b"]),
                                reward="cert", lr=0.1)
    first, second = strategy.select(1)[0], strategy.select(1)[0]
    info = strategy.update([first], np.array([[0.8, 0.2]]))
    assert info["rewards"]["cert"] == pytest.approx([0.6]) and info["reward"] == [0.0]
    assert info["rewards"]["div"] == pytest.approx([1.0])  # nothing seen before: mean 0
    info = strategy.update([second], np.array([[0.6, 0.4]]))
    assert info["rewards"]["cert"] == pytest.approx([0.2])
    assert info["rewards"]["div"] == pytest.approx([0.2])  # [.6,.4] vs mean [.8,.2]
    assert info["reward"] == pytest.approx([-1.0])  # (0.2 - 0.4) / 0.2
    assert info["advantage"] == pytest.approx([-1.0]) and info["step"] == 2
    chosen = 1 + int(strategy.labels[second])
    assert strategy.bandit.H[chosen] == pytest.approx(-0.05)  # 0.1 * -1 * (1 - 1/2)
    assert strategy.bandit.H[3 - chosen] == pytest.approx(0.05)
    assert "adaptive step 2" in caplog.text and "policy entropy" in caplog.text
    json.dumps(info)  # what the caller journals


# ---------------------------------------------------------------------------------- random


def test_random_never_repeats_and_exhausts():
    strategy = RandomStrategy(50, seed=3)
    parts = [strategy.select(n) for n in (7, 13, 0, 20)]
    assert strategy.remaining == 10
    with pytest.raises(TransferSetExhausted, match="11 more images.*only 10 of its 50"):
        strategy.select(11)
    parts.append(strategy.select(10))  # the failed call took nothing
    picked = np.concatenate(parts)
    assert picked.dtype == np.int64 and sorted(picked.tolist()) == list(range(50))
    with pytest.raises(TransferSetExhausted):
        strategy.select(1)
    with pytest.raises(UsageError, match="`n`"):
        strategy.select(-1)
    with pytest.raises(UsageError, match="num_items"):
        RandomStrategy(0)


def test_random_resumes_where_it_stopped():
    whole = RandomStrategy(100, seed=7).select(100)
    first = RandomStrategy(100, seed=7)
    head = first.select(30)
    np.testing.assert_array_equal(head, whole[:30])
    # resume from the journal's answered indices, and from the saved state
    from_journal = RandomStrategy(100, seed=7, exclude=head)
    np.testing.assert_array_equal(from_journal.select(20), whole[30:50])
    from_state = RandomStrategy(100, seed=7)
    from_state.load_state(json.loads(json.dumps(first.state())))
    np.testing.assert_array_equal(from_state.select(70), whole[30:])
    # excluded images stay excluded whatever the state says
    skip = RandomStrategy(100, seed=7, exclude=whole[30:35])
    skip.load_state(first.state())
    np.testing.assert_array_equal(skip.select(10), whole[35:45])
    with pytest.raises(UsageError, match="seed"):
        RandomStrategy(100, seed=8).load_state(first.state())
    with pytest.raises(UsageError, match="random strategy"):
        RandomStrategy(100, seed=7).load_state({"kind": "adaptive"})


# -------------------------------------------------------------------------------- adaptive


def test_adaptive_masks_exhausted_leaves():
    # cat: 1 image, dog: 0, cow: 2, car: 3, van: 0 -> 6 images, dog and van never drawn
    labels = np.array([3, 0, 3, 2, 3, 2])
    strategy = AdaptiveStrategy(labels, two_level_tree(), reward="div", seed=1)
    p = strategy.policy(top=5)
    assert {name for name, _ in p["top"]} == {"cat", "cow", "car"}
    picked = []
    for n in (1, 2, 3):
        index = strategy.select(n)
        picked.extend(index.tolist())
        strategy.update(index, np.full((n, 4), 0.25))
    assert sorted(picked) == list(range(6)) and strategy.remaining == 0
    assert strategy.policy()["top"] == []
    with pytest.raises(TransferSetExhausted, match="only 0 of its 6"):
        strategy.select(1)


def test_adaptive_state_round_trip_gives_identical_selections():
    labels = np.repeat(np.arange(5), 30)
    rng = np.random.default_rng(0)

    def make():
        return AdaptiveStrategy(labels, two_level_tree(), reward="all", seed=11, lr=0.3)

    first = make()
    for _ in range(5):
        index = first.select(8)
        first.update(index, rng.dirichlet(np.ones(4), 8), np.log(rng.dirichlet(np.ones(4), 8)))
    outstanding = first.select(3)  # selected, not yet answered
    resumed = make()
    resumed.load_state(json.loads(json.dumps(first.state())))
    y, log_q = rng.dirichlet(np.ones(4), 3), np.log(rng.dirichlet(np.ones(4), 3))
    assert first.update(outstanding, y, log_q) == resumed.update(outstanding, y, log_q)
    np.testing.assert_array_equal(first.select(20), resumed.select(20))
    np.testing.assert_array_equal(first.bandit.H, resumed.bandit.H)
    assert first.state() == resumed.state()
    other = AdaptiveStrategy(labels[::-1].copy(), two_level_tree(), seed=11)
    with pytest.raises(UsageError, match="fingerprint"):
        other.load_state(first.state())
    with pytest.raises(UsageError, match="adaptive strategy"):
        other.load_state(RandomStrategy(5).state())


def test_adaptive_exclude_and_resent_queries():
    labels = np.repeat(np.arange(5), 4)
    strategy = AdaptiveStrategy(labels, two_level_tree(), reward="cert", exclude=range(10))
    assert strategy.remaining == 10
    picked = strategy.select(10)
    assert set(picked.tolist()) == set(range(10, 20))
    # an answer for an image this strategy never selected (re-sent after a crash)
    resent = AdaptiveStrategy(labels, two_level_tree(), reward="cert")
    info = resent.update([7], np.array([[0.9, 0.1]]))
    assert info["classes"] == [1] and resent.remaining == 19
    assert 7 not in resent.select(19).tolist()


def test_adaptive_argument_errors():
    tree = two_level_tree()
    with pytest.raises(UsageError, match="reward.*cert, div, loss, all"):
        AdaptiveStrategy([0, 1], tree, reward="entropy")
    with pytest.raises(UsageError, match="labels.*indices into the hierarchy's 5 classes"):
        AdaptiveStrategy([0, 5], tree)
    with pytest.raises(UsageError, match="lr"):
        AdaptiveStrategy([0, 1], tree, lr=0.0)
    with pytest.raises(UsageError, match="variance_floor"):
        AdaptiveStrategy([0, 1], tree, variance_floor=0.0)
    strategy = AdaptiveStrategy([0, 1, 2], tree, reward="loss")
    index = strategy.select(2)
    with pytest.raises(UsageError, match="surrogate_log_probs.*reward='loss'"):
        strategy.update(index, np.eye(2))
    with pytest.raises(UsageError, match="victim_probs.*one per index"):
        strategy.update(index, np.eye(3), np.zeros((3, 3)))
    with pytest.raises(UsageError, match="indices.*transfer-set images"):
        strategy.update([9], np.eye(2)[:1], np.zeros((1, 2)))
    info = strategy.update(index[:1], np.eye(2)[:1], np.zeros((1, 2)))
    with pytest.raises(UsageError, match="victim_probs.*3 classes.*the 2 classes"):
        strategy.update(index[1:], np.eye(3)[:1], np.zeros((1, 3)))
    assert info["rewards"]["loss"] == pytest.approx([np.log(2)])


# ------------------------------------------------------------------------- active strategies


def test_entropy_ranking_picks_the_most_uncertain_rows():
    probs = np.array([[1.0, 0.0, 0.0],      # certain
                      [1 / 3, 1 / 3, 1 / 3],  # most uncertain
                      [0.8, 0.1, 0.1],
                      [0.5, 0.5, 0.0]])
    assert entropy(probs) == pytest.approx([0.0, np.log(3), 0.639031859, np.log(2)])
    assert uncertainty_order(probs, 2).tolist() == [1, 3]
    assert uncertainty_order(probs, 4).tolist() == [1, 3, 2, 0]
    with pytest.raises(UsageError, match="n"):
        uncertainty_order(probs, 5)


def test_k_center_picks_the_points_farthest_from_the_queried_set():
    queried = np.array([[0.0, 0.0]])
    pool = np.array([[0.1, 0.0], [5.0, 0.0], [5.1, 0.0], [0.0, 3.0], [-4.0, 0.0]])
    # 5.1 is farthest from the origin; then -4 (4 from the origin, 9.1 from 5.1); then (0, 3)
    # (3 from the origin); 5.0 is 0.1 from the picked 5.1, so it comes after those
    assert k_center_greedy(pool, queried, 3).tolist() == [2, 4, 3]
    assert k_center_greedy(pool, queried, 5).tolist()[:3] == [2, 4, 3]
    # duplicates of a picked point are never picked twice
    twins = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    assert sorted(k_center_greedy(twins, np.zeros((0, 2)), 3).tolist()) == [0, 1, 2]
    # a queried centre already covers its twin: the far point first
    assert k_center_greedy(np.array([[0.0, 0.0], [2.0, 0.0]]), queried, 1).tolist() == [1]


@pytest.fixture(scope="module")
def linear_model():
    """A 2-class linear Keras model on 2-D inputs whose boundary is x0 = x1."""
    import keras

    inputs = keras.Input((2,))
    dense = keras.layers.Dense(2, use_bias=False)
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([np.array([[1.0, -1.0], [-1.0, 1.0]], np.float32)])
    return model


def test_deepfool_distance_is_the_distance_to_a_linear_boundary(linear_model):
    points = np.array([[3.0, 0.0], [0.5, 0.0], [0.0, 2.0], [1.0, 1.2]], np.float32)
    dist = deepfool_distances(linear_model, points, overshoot=0.02)
    exact = np.abs(points[:, 0] - points[:, 1]) / np.sqrt(2)  # distance to the line x0 = x1
    assert dist == pytest.approx(exact * 1.02, rel=1e-3, abs=1e-3)
    assert np.argsort(dist).tolist() == [3, 1, 2, 0]


def test_dfal_strategy_plans_the_points_nearest_the_boundary(linear_model):
    images = np.array([[3.0, 0.0], [0.5, 0.0], [0.0, 2.0], [1.0, 1.2], [9.0, 1.0]], np.float32)

    class Surrogate:
        model = linear_model

    strategy = ActiveStrategy("dfal", len(images), seed=0, exclude=[4])
    strategy.plan(0)  # the (empty) random seed set; image 4 counts as queried
    assert strategy.plan(2, Surrogate(), images).tolist() == [3, 1]
    assert strategy.select(2).tolist() == [3, 1]
    assert strategy.remaining == 2


class _ProbsSurrogate:
    """A stand-in surrogate predicting fixed probabilities per image (image = its index)."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs

    def predict_probs(self, images: np.ndarray) -> np.ndarray:
        return self.probs[np.asarray(images).reshape(len(images), -1)[:, 0].astype(int)]


def _pool(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(3, axis=3)


def test_active_rounds_random_seed_set_then_the_strategy():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(4, 0.3), size=40)
    surrogate = _ProbsSurrogate(probs)
    strategy = ActiveStrategy("uncertainty", 40, seed=3)
    first = strategy.plan(10, surrogate, _pool(40))  # nothing answered: random
    assert len(set(first.tolist())) == 10
    assert strategy.select(4).tolist() == first[:4].tolist()
    strategy.update(strategy.select(6), np.full((6, 4), 0.25))
    second = strategy.plan(5, surrogate, _pool(40))
    unqueried = np.setdiff1d(np.arange(40), first)
    expected = unqueried[np.argsort(-entropy(probs[unqueried]), kind="stable")[:5]]
    assert second.tolist() == expected.tolist()
    with pytest.raises(RuntimeError, match="planned"):
        strategy.plan(1, surrogate, _pool(40))
    assert set(strategy.select(5).tolist()).isdisjoint(first.tolist())


def test_kcenter_strategy_prefers_points_unlike_those_queried():
    # 20 images predicted as class 0, 5 as class 1, 5 as class 2; class 0 already queried
    probs = np.zeros((30, 3))
    probs[:20, 0] = probs[20:25, 1] = probs[25:, 2] = 1.0
    strategy = ActiveStrategy("kcenter", 30, seed=0)
    strategy.plan(0)  # the (empty) random seed set
    strategy.exclude(np.arange(10))
    planned = strategy.plan(2, _ProbsSurrogate(probs), _pool(30))
    assert sorted(probs[planned].argmax(axis=1).tolist()) == [1, 2]


def test_active_state_round_trip_through_json():
    probs = np.random.default_rng(1).dirichlet(np.ones(3), size=50)
    surrogate = _ProbsSurrogate(probs)
    a = ActiveStrategy("kcenter", 50, seed=2, candidates=30)
    a.plan(8, surrogate, _pool(50))
    a.select(8)
    a.plan(10, surrogate, _pool(50))
    a.select(3)
    b = ActiveStrategy("kcenter", 50, seed=2, candidates=30)
    b.load_state(json.loads(json.dumps(a.state())))
    assert b.state() == a.state()
    assert b.select(7).tolist() == a.select(7).tolist()
    assert b.plan(6, surrogate, _pool(50)).tolist() == a.plan(6, surrogate, _pool(50)).tolist()
    # an answered image excluded on resume leaves the queue
    c = ActiveStrategy("kcenter", 50, seed=2, candidates=30, exclude=a.state()["queue"][:2])
    c.load_state(json.loads(json.dumps(a.state())))
    assert c.queued == a.queued - 2
    with pytest.raises(UsageError, match="state"):
        ActiveStrategy("kcenter", 50, seed=3, candidates=30).load_state(a.state())
    with pytest.raises(UsageError, match="state"):
        ActiveStrategy("dfal", 50, seed=2, candidates=30).load_state(a.state())


def test_active_strategy_errors():
    with pytest.raises(UsageError, match="strategy"):
        ActiveStrategy("entropy", 10)
    with pytest.raises(UsageError, match="candidates"):
        ActiveStrategy("dfal", 10, candidates=0)
    strategy = ActiveStrategy("uncertainty", 5)
    with pytest.raises(TransferSetExhausted):
        strategy.plan(6)
    strategy.plan(2)
    with pytest.raises(RuntimeError, match="planned"):
        strategy.select(3)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["kcenter", "dfal"])
def test_knockoff_with_an_active_strategy_learns_and_resumes(tmp_path, kind):
    """End to end through a `KerasVictim` (the colour victim of conftest): 4 rounds of 50
    queries, the surrogate retrained before each round; agreement well above chance (1/3);
    a resume of the finished run asks nothing again."""
    from attack import KerasVictim, Knockoff, Surrogate
    from attack.journal import QueryJournal
    from common.data import ImageDataset
    from serving.testing import COLOUR_CLASSES as CLASSES
    from serving.testing import colour_images, colour_victim

    model = colour_victim()
    transfer = colour_images(400, seed=1)
    images = colour_images(200, seed=2)
    labels = np.argmax(np.asarray(model(images.astype(np.float32))), axis=1)
    test = ImageDataset(images, labels, CLASSES, "colours-test")
    surrogate = Surrogate(backbone="cnn", weights="none", input_size=16, epochs=6,
                          batch_size=32, learning_rate=3e-3)
    attack = Knockoff(budget=200, strategy=kind, active_rounds=3, active_pool=150, heldout=50,
                      noise=50, curve_points=1, seed=0)
    victim = KerasVictim(model, input_range="0,255", batch_size=32)
    result = attack.extract(victim, transfer, surrogate=surrogate, test=test,
                            run_dir=tmp_path / "run")
    assert result.queries == 200
    with QueryJournal.open(tmp_path / "run") as journal:
        assert len(np.unique(journal.answered_indices())) == 200
    state = json.loads((tmp_path / "run" / "strategy.json").read_text())
    assert state["kind"] == kind and state["rounds"] == 4 and state["queue"] == []
    assert len(state["used"]) == 200
    assert result.headline["fidelity_test"] > 0.6
    again = KerasVictim(model, input_range="0,255", batch_size=32)
    attack.extract(again, transfer, surrogate=surrogate, test=test, run_dir=tmp_path / "run",
                   resume=True)
    assert again.queries == 0  # answers, probes and evaluation answers all kept in the run


@pytest.mark.slow
def test_active_run_stopped_mid_round_resumes_without_paying_twice(tmp_path):
    """Stopped after 50 of 120 queries (inside the second of three 40-query rounds): the resume
    sends only the 70 missing ones, each image once, and finishes the planned rounds."""
    from attack import KerasVictim, Knockoff, Surrogate
    from attack.journal import QueryJournal
    from serving.testing import colour_images, colour_victim

    model = colour_victim()
    transfer = colour_images(300, seed=1)
    surrogate = Surrogate(backbone="cnn", weights="none", input_size=16, epochs=2,
                          batch_size=32, learning_rate=3e-3)
    attack = Knockoff(budget=120, strategy="uncertainty", active_rounds=2, heldout=0,
                      noise=10, curve_points=1, seed=0)

    class Stop(Exception):
        pass

    def stop(done, total):
        if done >= 50:
            raise Stop

    first = KerasVictim(model, input_range="0,255", batch_size=10)
    with pytest.raises(Stop):
        attack.extract(first, transfer, surrogate=surrogate, run_dir=tmp_path / "run",
                       on_progress=stop)
    with QueryJournal.open(tmp_path / "run") as journal:
        kept = journal.answered_indices().copy()
    assert 50 <= len(kept) < 80
    second = KerasVictim(model, input_range="0,255", batch_size=10)
    attack.extract(second, transfer, surrogate=surrogate, run_dir=tmp_path / "run",
                   resume=True)
    with QueryJournal.open(tmp_path / "run") as journal:
        answered = journal.answered_indices()
        assert np.array_equal(answered[:len(kept)], kept)
        assert len(answered) == len(np.unique(answered)) == 120
    state = json.loads((tmp_path / "run" / "strategy.json").read_text())
    assert state["rounds"] == 3 and state["queue"] == []
