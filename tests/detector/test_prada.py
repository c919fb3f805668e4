"""PRADA on hand-built streams: a JBDA-like synthetic stream (small signed steps around seeds) is
flagged, a natural-like i.i.d. stream is not; the growing-set bookkeeping, batching, bounds and
serialisation of the per-client state."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import UsageError
from detector.prada import Prada, PradaVerdict, pixel_features

SIDE = 16
DIM = SIDE * SIDE * 3


def natural_images(n: int, seed: int) -> np.ndarray:
    """Smooth random colour images (upsampled 4x4 noise + fine noise), uint8, i.i.d."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 4, 4, 3))
    images = np.repeat(np.repeat(coarse, SIDE // 4, axis=1), SIDE // 4, axis=2)
    images = images + rng.normal(0, 20, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


def classes_of(features: np.ndarray) -> np.ndarray:
    """A stand-in victim: the dominant colour channel (3 classes)."""
    return features.reshape(len(features), -1, 3).mean(axis=1).argmax(axis=1)


def jbda_stream(seeds: int, rounds: int, step: float, seed: int) -> np.ndarray:
    """Papernot et al.'s augmentation shape: every round adds, for each point so far, the point
    moved by `step` along a random sign vector (a stand-in for the sign of the Jacobian)."""
    rng = np.random.default_rng(seed)
    points = pixel_features(natural_images(seeds, seed))
    stream = [points]
    for _ in range(rounds):
        moved = np.clip(points + step * np.sign(rng.normal(size=points.shape)), 0, 1)
        stream.append(moved.astype(np.float32))
        points = np.concatenate([points, moved])
    return np.concatenate(stream)


def run(prada: Prada, features: np.ndarray, batch: int = 10) -> tuple[dict, PradaVerdict]:
    state = prada.new_state(3, features.shape[1])
    verdict = None
    for start in range(0, len(features), batch):
        part = features[start:start + batch]
        verdict = prada.update(state, part, classes_of(part))
    return state, verdict


def test_jbda_like_stream_is_flagged():
    stream = jbda_stream(seeds=20, rounds=4, step=0.1, seed=0)  # 320 queries
    state, verdict = run(Prada(delta=0.95, min_samples=100), stream)
    assert verdict.flagged and verdict.statistic < 0.9
    assert 100 <= state["flagged_at"] <= 200


def test_natural_iid_stream_is_not_flagged():
    stream = pixel_features(natural_images(600, seed=1))
    prada = Prada(delta=0.95, min_samples=100)
    state = prada.new_state(3, DIM)
    statistics = []
    for start in range(0, len(stream), 10):
        part = stream[start:start + 10]
        verdict = prada.update(state, part, classes_of(part))
        if verdict.statistic is not None:
            statistics.append(verdict.statistic)
    assert state["flagged_at"] == -1 and min(statistics) > 0.95
    assert verdict.queries == 600


def test_growing_set_distances_and_threshold_by_hand():
    prada = Prada(delta=0.9, min_samples=3)
    state = prada.new_state(2, 2)
    points = np.array([[0, 0], [3, 4], [3, 4.1], [10, 10], [3, 4.1]], np.float32)
    prada.update(state, points, np.array([0, 0, 0, 1, 0]))
    # Class 0: [0,0] enters (distance 0), [3,4] at 5, [3,4.1] at 0.1; the repeat at 0.
    np.testing.assert_allclose(state["distances"], [5.0, 0.1, 0.0], atol=1e-6)
    assert state["set_size"] == 4  # the repeat (0 <= T_0) does not join
    d = np.array([0.0, 5.0, 0.1])
    assert state["class_threshold"][0] == pytest.approx(max(0.0, d.mean() - d.std()))
    assert state["class_count"].tolist() == [3, 1]


def test_threshold_keeps_near_duplicates_out_of_the_growing_set():
    prada = Prada(min_samples=3)
    state = prada.new_state(1, 2)
    prada.update(state, np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float32),
                 np.zeros(4, int))
    before = state["set_size"]
    threshold = state["class_threshold"][0]
    assert threshold > 1.0
    prada.update(state, np.array([[0.5, 0.5]], np.float32), [0])
    assert state["set_size"] == before and state["distances"][-1] < threshold


def test_small_steps_are_measured_exactly_in_high_dimension():
    prada = Prada(min_samples=3)
    state = prada.new_state(1, 3072)
    x = np.full((1, 3072), 0.5, np.float32)
    y = x.copy()
    y[0, 0] += 1e-3
    prada.update(state, np.concatenate([x, y]), [0, 0])
    assert state["distances"][0] == pytest.approx(1e-3, rel=1e-3)


def test_batches_give_the_same_state_as_one_query_at_a_time():
    stream = jbda_stream(seeds=10, rounds=3, step=0.05, seed=2)
    prada = Prada(min_samples=20)
    batched, v1 = run(prada, stream, batch=7)
    single, v2 = run(prada, stream, batch=1)
    np.testing.assert_allclose(batched["distances"], single["distances"], rtol=1e-6)
    np.testing.assert_array_equal(Prada.members(batched)[2], Prada.members(single)[2])
    np.testing.assert_allclose(batched["class_threshold"], single["class_threshold"])
    assert v1.statistic == pytest.approx(v2.statistic)


def test_memory_is_bounded_and_the_oldest_entries_go():
    prada = Prada(min_samples=10, max_set=50, max_distances=120)
    stream = pixel_features(natural_images(400, seed=3))
    state, verdict = run(prada, stream, batch=25)
    assert state["set_size"] == 50 and len(state["set"]) == 50
    assert len(state["distances"]) == 120
    _, _, order = Prada.members(state)
    assert order.min() > 300 and np.all(np.diff(order) > 0)  # only recent members are left
    assert verdict.queries == 400
    assert prada.memory_bytes(3, DIM) >= state["set"].nbytes + state["distances"].nbytes


def test_state_round_trip_through_bytes_continues_identically():
    prada = Prada(min_samples=20)
    stream = jbda_stream(seeds=10, rounds=3, step=0.1, seed=4)
    state, _ = run(prada, stream[:60])
    data = Prada.dumps(state)
    assert isinstance(data, bytes)
    restored = Prada.loads(data)
    rest = stream[60:]
    a = prada.update(state, rest, classes_of(rest))
    b = prada.update(restored, rest, classes_of(rest))
    assert a == b
    for mine, theirs in zip(Prada.members(state), Prada.members(restored)):
        np.testing.assert_array_equal(mine, theirs)


def test_no_statistic_before_min_samples():
    prada = Prada(min_samples=50)
    state, verdict = run(prada, pixel_features(natural_images(30, seed=5)))
    assert verdict == PradaVerdict(False, None, 30)


def test_constant_distances_count_as_not_normal():
    prada = Prada(min_samples=5)
    assert prada.statistic(np.full(50, 2.0)) == 0.0


@pytest.mark.parametrize("kwargs", [{"delta": 1.5}, {"min_samples": 2}, {"max_set": 0},
                                    {"max_distances": 10, "min_samples": 20},
                                    {"outlier_std": -1.0}])
def test_bad_parameters(kwargs):
    with pytest.raises(UsageError):
        Prada(**kwargs)


def test_bad_updates_and_bytes():
    prada = Prada()
    state = prada.new_state(3, 4)
    with pytest.raises(UsageError, match="features"):
        prada.update(state, np.zeros((2, 5), np.float32), [0, 1])
    with pytest.raises(UsageError, match="classes"):
        prada.update(state, np.zeros((2, 4), np.float32), [0, 3])
    with pytest.raises(UsageError, match="classes"):
        prada.update(state, np.zeros((2, 4), np.float32), [0])
    with pytest.raises(UsageError, match="data"):
        Prada.loads(b"not an archive")
    assert state["queries"] == 0
