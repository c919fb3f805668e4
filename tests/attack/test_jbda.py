"""JBDA (Papernot et al. 2017, Juuti et al.'s reservoir variant): the augmentation step against a
hand-computed Jacobian, the periodic sign flip, the reservoir bound, bad input, an end-to-end run
through real gRPC that learns, and a resume that sends no answered query twice."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from attack.config import JBDAConfig
from attack.jbda import (
    jacobian_augment,
    jacobian_signs,
    load_rounds,
    main,
    reservoir_sample,
    run_jbda,
    step_sign,
)
from common.errors import UsageError
from tests.attack.helpers import assert_refused, tiny_config


def make_config(target, data_files, out, **overrides) -> JBDAConfig:
    _, test = data_files
    return tiny_config(JBDAConfig, target, out, **{
        "seed_set": str(test), "seed_split": "test", "seeds": 30, "budget": 130, "rounds": 3,
        "per_round": 40, "epochs": 8, "batch_size": 16, "query_batch": 16, "in_flight": 1,
        "test_set": str(test), "noise": 50, **overrides})


def linear_model(weights: np.ndarray, size: int):
    import keras

    inputs = keras.Input((size, size, 3))
    flat = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(weights.shape[1], use_bias=False)
    model = keras.Model(inputs, dense(flat))
    dense.set_weights([weights])
    return model


def test_augmentation_step_matches_the_hand_computed_jacobian():
    # logits z = W^T x (x flattened), F = softmax(z): dF_c/dx = F_c (W[:, c] - W F)
    rng = np.random.default_rng(0)
    size, classes = 4, 3
    weights = rng.normal(0, 0.001, size=(size * size * 3, classes)).astype(np.float32)
    weights[:5] = 0.0  # pixels the model ignores: zero gradient, the pixel must not move
    images = rng.integers(0, 256, size=(6, size, size, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    model = linear_model(weights, size)

    x = images.reshape(len(images), -1).astype(np.float64)
    z = x @ weights.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected_grad = p[np.arange(6), labels][:, None] * (weights.T[labels] - p @ weights.T)
    expected_sign = np.sign(expected_grad).reshape(images.shape)
    assert p.max() < 0.9  # not saturated: every non-zero gradient is far from float32 noise

    signs = jacobian_signs(model, images, labels)
    assert signs.dtype == np.int8
    assert np.array_equal(signs, expected_sign)
    assert (signs.reshape(6, -1)[:, :5] == 0).all()

    for step in (26, -26):
        moved = jacobian_augment(model, images, labels, step)
        expected = np.clip(images.astype(int) + step * expected_sign, 0, 255)
        assert moved.dtype == np.uint8 and np.array_equal(moved, expected)
    # and the step moves F_c up (+) or down (-), as a Jacobian step should
    def f_c(imgs):
        logits = imgs.reshape(len(imgs), -1).astype(np.float64) @ weights
        q = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (q / q.sum(axis=1, keepdims=True))[np.arange(6), labels]
    assert (f_c(jacobian_augment(model, images, labels, 3)) >= f_c(images) - 1e-12).all()
    assert (f_c(jacobian_augment(model, images, labels, -3)) <= f_c(images) + 1e-12).all()


def test_jacobian_through_the_surrogate_resize():
    # an image at 8x8 sent, a model at 4x4: the gradient flows back through the resize
    rng = np.random.default_rng(1)
    weights = rng.normal(0, 0.01, size=(4 * 4 * 3, 3)).astype(np.float32)
    images = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    signs = jacobian_signs(linear_model(weights, 4), images, np.array([0, 2]))
    assert signs.shape == images.shape and np.abs(signs).sum() > 0


def test_lambda_sign_flips_every_tau_rounds():
    assert [step_sign(r, 2) for r in range(7)] == [1, 1, -1, -1, 1, 1, -1]
    assert [step_sign(r, 3) for r in range(7)] == [1, 1, 1, -1, -1, -1, 1]
    assert [step_sign(r, 1) for r in range(4)] == [1, -1, 1, -1]


def test_reservoir_bounds_the_round_and_samples_uniformly():
    rng = np.random.default_rng(0)
    chosen = reservoir_sample(1000, 40, rng)
    assert len(chosen) == 40 == len(np.unique(chosen))
    assert chosen.min() >= 0 and chosen.max() < 1000
    assert np.array_equal(reservoir_sample(7, 40, rng), np.arange(7))  # all when n <= k
    assert len(reservoir_sample(0, 5, rng)) == 0
    counts = np.zeros(20)
    for _ in range(2000):
        counts[reservoir_sample(20, 5, rng)] += 1
    # each item is kept with probability 5/20: 500 expected per item
    assert np.all(np.abs(counts - 500) < 80), counts


def test_budget_smaller_than_the_seeds_exits_2(capsys, data_files, tmp_path):
    _, test = data_files
    code = main(["--seed-set", str(test), "--seeds", "50", "--budget", "10",
                 "--out", str(tmp_path / "r"), "--weights", "none"])
    assert_refused(capsys, code, "`--budget`", "seeds", unwritten=tmp_path / "r")


def test_jbda_learns_the_victim_with_bounded_rounds(served_victim, data_files, tmp_path):
    from attack.journal import QueryJournal

    config = make_config(served_victim, data_files, tmp_path / "run")
    result = run_jbda(config)
    rounds = load_rounds(tmp_path / "run")
    # seeds; round 1 augments all 30 (fewer than the bound); round 2 a reservoir of 40 of
    # 60; round 3 is cut to the budget
    assert [len(r) for r in rounds] == [30, 30, 40, 30]
    assert result.queries == 130
    with QueryJournal.open(tmp_path / "run") as journal:
        assert sorted(journal.answered_indices().tolist()) == list(range(130))
    # each new image is an earlier query moved by exactly 0 or 26 levels per pixel (lambda
    # 0.1 quantised), except where the move was clipped at 0 or 255
    for r in range(1, len(rounds)):
        earlier = np.concatenate(rounds[:r]).astype(int)
        for image in rounds[r].astype(int):
            diff = np.abs(image[None] - earlier)
            ok = np.isin(diff, (0, 26)) | (image[None] == 0) | (image[None] == 255)
            assert ok.all(axis=(1, 2, 3)).any()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["evaluation"]["fidelity_test"] > 0.6  # chance: 1/3
    assert [p["queries"] for p in report["curve"]] == [30, 60, 100, 130]


def test_resume_after_interruption_sends_no_answered_query_twice(served_victim, data_files,
                                                                 tmp_path, monkeypatch):
    from attack.journal import QueryJournal

    sent: list[int] = []
    original = QueryJournal.record_sent

    def counting(self, indices):
        original(self, indices)  # refuses an answered index: it would raise here
        sent.extend(np.asarray(indices).tolist())

    monkeypatch.setattr(QueryJournal, "record_sent", counting)
    config = make_config(served_victim, data_files, tmp_path / "run", rounds=2, budget=100,
                         query_batch=8)

    class Stop(Exception):
        pass

    def interrupt(done, total):
        if done >= 40:  # in round 1 (rows 30..59, batches of 8)
            raise Stop

    with pytest.raises(Stop):
        run_jbda(config, on_progress=interrupt)
    first = list(sent)
    before = load_rounds(tmp_path / "run")
    with QueryJournal.open(tmp_path / "run") as journal:
        answered = set(journal.answered_indices().tolist())
        in_flight = set(journal.pending().tolist())
    assert [len(r) for r in before] == [30, 30] and 40 <= len(answered) < 60

    run_jbda(dataclasses.replace(config, resume=True))
    second = sent[len(first):]
    after = load_rounds(tmp_path / "run")
    assert [len(r) for r in after] == [30, 30, 40]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # the same queries
    assert not answered & set(second)  # no answered query sent again
    assert set(second) & set(first) <= in_flight  # only those in flight at the stop, if any
    assert set(sent) == set(range(100))
    with QueryJournal.open(tmp_path / "run") as journal:
        assert journal.num_answered == 100 and not len(journal.pending())


def test_resume_refuses_another_config(served_victim, data_files, tmp_path):
    from attack.pipeline import prepare_run_dir

    config = make_config(served_victim, data_files, tmp_path / "run")
    prepare_run_dir(config)
    with pytest.raises(UsageError, match=r"resume.*--lambda 0.1 \(now --lambda 0.2\)"):
        prepare_run_dir(dataclasses.replace(config, step=0.2, resume=True))
