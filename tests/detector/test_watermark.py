"""DAWN watermark selection: deterministic per key, client and image, secret without the key;
answers that give the keyed wrong label at least WATERMARK_MASS (only the marked rows change);
the set stored and restored (file, SQLite, Redis)."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import UsageError
from detector.watermark import (
    WATERMARK_MASS,
    Watermarker,
    image_digest,
    load_watermarks,
    save_watermarks,
)

KEY = b"k" * 32
OTHER_KEY = b"q" * 32


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (2000, 4, 4, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def digests(images):
    return [image_digest(x) for x in images]


def test_selection_is_deterministic_and_near_the_fraction(digests):
    w = Watermarker(KEY, 0.1)
    first = w.selected("alice", digests)
    np.testing.assert_array_equal(first, Watermarker(KEY, 0.1).selected("alice", digests))
    assert 0.08 < first.mean() < 0.12
    # the same image sent again (anywhere in a batch) gets the same decision
    assert w.selected("alice", [digests[5]] * 3).tolist() == [bool(first[5])] * 3


def test_selection_is_secret_without_the_key_and_per_client(digests):
    ours = Watermarker(KEY, 0.1).selected("alice", digests)
    guessed = Watermarker(OTHER_KEY, 0.1).selected("alice", digests)
    other_client = Watermarker(KEY, 0.1).selected("bob", digests)
    for other in (guessed, other_client):
        # independent selections: the overlap is what chance gives (0.1 * 0.1 of the images)
        overlap = np.mean(ours & other)
        assert overlap < 0.03
        assert np.mean(ours == other) < 0.9


def test_digest_depends_on_pixels_and_shape():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 1
    assert image_digest(a) == image_digest(a.copy())
    assert image_digest(a) != image_digest(b)
    assert image_digest(a) != image_digest(a.reshape(8, 2, 3))


def test_wrong_label_is_never_the_top1_and_covers_the_others(digests):
    w = Watermarker(KEY, 0.5)
    labels = [w.wrong_label("alice", d, top1=3, classes=5) for d in digests[:400]]
    assert 3 not in labels
    counts = np.bincount(labels, minlength=5)
    assert counts[3] == 0 and counts.min() == 0 and sorted(counts)[1] > 70


def test_apply_answers_the_wrong_label_confidently_and_keeps_records(images):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5), size=200).astype(np.float32)
    w = Watermarker(KEY, 0.2)
    out, records = w.apply("alice", images[:200], probs, model="m", now=12.0)
    marked = [i for i in range(200) if not np.array_equal(out[i], probs[i])]
    assert len(records) == len(marked) > 20
    for i, r in zip(marked, records):
        assert r.label == out[i].argmax() != probs[i].argmax() == r.true_label
        assert out[i, r.label] >= WATERMARK_MASS - 1e-6
        assert out[i].sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_array_equal(r.image, images[i])
        assert (r.client, r.model, r.time) == ("alice", "m", 12.0)
    again, records2 = w.apply("alice", images[:200], probs)
    np.testing.assert_array_equal(again, out)
    assert [r.digest for r in records2] == [r.digest for r in records]


def test_relabel_swaps_then_raises_the_wrong_label_keeping_the_others_order():
    probs = np.array([[0.5, 0.3, 0.2, 0.0], [0.05, 0.95, 0.0, 0.0], [0.4, 0.4, 0.1, 0.1],
                      [2.0, 1.0, 1.0, 0.0]], np.float32)
    out = Watermarker.relabel(probs, np.array([0, 1, 2, 3]), np.array([2, 0, 1, 3]))
    # row 0: swapped to [0.2, 0.3, 0.5, 0], then the wrong label raised to 0.9, the rest x 0.2
    np.testing.assert_allclose(out[0], [0.04, 0.06, 0.9, 0.0], atol=1e-6)
    np.testing.assert_allclose(out[1], [0.95, 0.05, 0.0, 0.0], atol=1e-6)  # already >= 0.9
    np.testing.assert_array_equal(out[2], [0.0, 1.0, 0.0, 0.0])  # a tie: the one-hot
    np.testing.assert_allclose(out[3], [0.0, 0.2, 0.2, 3.6], atol=1e-6)  # scores keep their sum
    np.testing.assert_array_equal(probs[0], np.float32([0.5, 0.3, 0.2, 0.0]))  # input kept
    np.testing.assert_allclose(Watermarker.relabel(probs, np.array([0]), np.array([1]),
                                                   mass=0.5)[0], [0.3, 0.5, 0.2, 0.0],
                               atol=1e-6)


def test_bad_arguments():
    with pytest.raises(UsageError, match="`key`"):
        Watermarker(b"short", 0.1)
    with pytest.raises(UsageError, match="fraction"):
        Watermarker(KEY, 0.0)
    with pytest.raises(UsageError, match="`probs`"):
        Watermarker(KEY, 0.1).apply("a", np.zeros((2, 4, 4, 3), np.uint8), np.ones((3, 5)))


def _records(images, n=50):
    probs = np.random.default_rng(2).dirichlet(np.ones(5), size=n).astype(np.float32)
    _, records = Watermarker(KEY, 0.3).apply("alice", images[:n], probs, model="m", now=1.0)
    return records


def _same(a, b):
    assert [(r.client, r.model, r.digest, r.label, r.true_label) for r in a] == \
        [(r.client, r.model, r.digest, r.label, r.true_label) for r in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)


def test_file_round_trip(tmp_path, images):
    records = _records(images)
    path = save_watermarks(tmp_path / "wm.npz", records)
    _same(load_watermarks(path), records)
    with pytest.raises(UsageError, match="`watermarks`"):
        load_watermarks(tmp_path / "missing.npz")


def test_sqlite_store_keeps_watermarks_across_a_restart(tmp_path, images):
    from serving.gateway.store import SQLiteStore

    records = _records(images)
    store = SQLiteStore(tmp_path / "gw.db")
    store.add_watermarks(records)
    store.add_watermarks(records[:3])  # the same query again: stored once
    store.close()
    reopened = SQLiteStore(tmp_path / "gw.db")
    _same(reopened.watermarks("alice"), records)
    assert reopened.watermarks("bob") == []
    reopened.close()


def test_redis_store_keeps_watermarks(images):
    fakeredis = pytest.importorskip("fakeredis")
    from serving.gateway.store import RedisStore

    server = fakeredis.FakeServer()
    records = _records(images)
    RedisStore(client=fakeredis.FakeRedis(server=server)).add_watermarks(records + records[:2])
    restored = RedisStore(client=fakeredis.FakeRedis(server=server)).watermarks("alice")
    _same(restored, records)
