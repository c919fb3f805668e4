"""Output policies on batches: shapes kept, rows summing to 1, no leak from label-only, top-1 kept
where promised, each row answered as if it came alone, and the text form round trip."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from common.errors import UsageError
from detector.policies import (
    GaussianNoise,
    Identity,
    LabelOnly,
    ReverseSigmoid,
    Rounding,
    TopK,
    parse_policy,
)

ALL = [Identity(), LabelOnly(), TopK(1), TopK(3), Rounding(1), Rounding(3),
       GaussianNoise(0.05, seed=0), GaussianNoise(0.5, seed=1), ReverseSigmoid(0.7, 0.1),
       ReverseSigmoid(5.0, 2.0)]
DETERMINISTIC = [p for p in ALL if not isinstance(p, GaussianNoise)]


def _rows(values: np.ndarray) -> np.ndarray:
    """Non-negative rows normalised to sum to 1 (float32), as a softmax answers."""
    values = np.abs(values.astype(np.float64)) + 1e-6
    return (values / values.sum(axis=1, keepdims=True)).astype(np.float32)


probability_batches = st.integers(1, 12).flatmap(
    lambda k: arrays(np.float32, st.tuples(st.integers(0, 9), st.just(k)),
                     elements=st.floats(0, 1, width=32))
).map(_rows)


def softmax_batch(n: int, k: int, seed: int, scale: float = 3.0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0, scale, (n, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.spec)
@settings(max_examples=60, deadline=None)
@given(probs=probability_batches)
def test_every_policy_keeps_shape_and_answers_probability_rows(policy, probs):
    out = policy(probs)
    assert out.shape == probs.shape and out.dtype == np.float32
    assert np.all(out >= 0) and np.all(np.isfinite(out))
    if len(out):
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


@settings(max_examples=80, deadline=None)
@given(probs=probability_batches)
def test_label_only_is_exactly_the_one_hot_of_the_top1(probs):
    out = LabelOnly()(probs)
    assert set(np.unique(out)) <= {0.0, 1.0}
    assert np.all(out.sum(axis=1) == 1.0)
    np.testing.assert_array_equal(np.argmax(out, axis=1), np.argmax(probs, axis=1))


def test_label_only_leaks_nothing_but_the_label():
    a = np.array([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]], np.float32)
    b = np.array([[0.34, 0.33, 0.33], [0.4, 0.35, 0.25]], np.float32)
    np.testing.assert_array_equal(LabelOnly()(a), LabelOnly()(b))


@pytest.mark.parametrize("k", [1, 2, 5])
@settings(max_examples=60, deadline=None)
@given(probs=probability_batches)
def test_top_k_keeps_at_most_k_and_the_top1(k, probs):
    out = TopK(k)(probs)
    assert np.all((out > 0).sum(axis=1) <= k)
    rows = np.arange(len(probs))
    top1 = np.argmax(probs, axis=1)
    assert np.all(out[rows, top1] == out.max(axis=1)) if len(out) else True
    # The kept entries keep their ratios.
    for row in range(len(probs)):
        kept = out[row] > 0
        ratio = probs[row][kept] / out[row][kept]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)


def test_top_k_on_a_batch_zeroes_the_right_entries():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]], np.float32)
    out = TopK(2)(probs)
    np.testing.assert_allclose(out, [[0, 0.6 / 0.9, 0.3 / 0.9], [0.5 / 0.8, 0, 0.3 / 0.8]],
                               rtol=1e-6)


def test_rounding_rounds_then_renormalises():
    probs = np.array([[0.123, 0.456, 0.421], [0.333, 0.333, 0.334]], np.float32)
    out = Rounding(1)(probs)
    np.testing.assert_allclose(out, [[0.1 / 1.0, 0.5 / 1.0, 0.4 / 1.0], [1 / 3, 1 / 3, 1 / 3]],
                               atol=1e-6)
    np.testing.assert_allclose(Rounding(1)(probs).sum(axis=1), 1.0, atol=1e-6)


def test_rounding_away_every_entry_falls_back_to_the_label():
    probs = np.full((2, 40), 1 / 40, np.float32)
    probs[1, 7] += 0.01
    probs[1] /= probs[1].sum()
    out = Rounding(1)(probs)
    np.testing.assert_array_equal(np.argmax(out, axis=1), [0, 7])
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


@settings(max_examples=60, deadline=None)
@given(probs=probability_batches, sigma=st.floats(0.0, 2.0), seed=st.integers(0, 2**16))
def test_noise_keeps_the_top1_and_sums_to_one(probs, sigma, seed):
    out = GaussianNoise(sigma, seed=seed)(probs)
    if len(out):
        np.testing.assert_array_equal(np.argmax(out, axis=1), np.argmax(probs, axis=1))
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_noise_really_perturbs_and_is_reproducible_with_a_seed():
    probs = softmax_batch(64, 10, seed=0)
    a, b = GaussianNoise(0.05, seed=3)(probs), GaussianNoise(0.05, seed=3)(probs)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - probs).mean() > 0.005
    noisy = GaussianNoise(0.5, seed=3, keep_top1=False)(probs)
    assert np.mean(np.argmax(noisy, axis=1) != np.argmax(probs, axis=1)) > 0.2
    np.testing.assert_allclose(GaussianNoise(0.0)(probs), probs, atol=1e-6)


def test_reverse_sigmoid_follows_lee_et_al():
    probs = np.array([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]], np.float32)
    beta, gamma = 0.7, 0.3
    y = probs.astype(np.float64)
    r = beta * (1 / (1 + np.exp(-gamma * np.log(y / (1 - y)))) - 0.5)
    expected = np.maximum(y - r, 0)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ReverseSigmoid(beta, gamma)(probs), expected, rtol=1e-5)
    # The perturbation is antisymmetric around 1/2 and zero there.
    r = ReverseSigmoid(beta, gamma).perturbation(np.array([[0.5, 0.2, 0.8]]))[0]
    np.testing.assert_allclose(r, [0.0, beta * (1 / (1 + 4 ** gamma) - 0.5),
                                   beta * (1 / (1 + 4 ** -gamma) - 0.5)], atol=1e-12)
    assert r[1] == pytest.approx(-r[2]) and r[2] > 0


def test_reverse_sigmoid_with_everything_clipped_answers_the_label_not_nan():
    probs = np.array([[0.6, 0.4], [0.999, 0.001]], np.float32)
    out = ReverseSigmoid(50.0, 5.0)(probs)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("policy", DETERMINISTIC, ids=lambda p: p.spec)
def test_a_batch_is_answered_row_by_row(policy):
    probs = softmax_batch(7, 5, seed=1)
    batch = policy(probs)
    for row in range(len(probs)):
        np.testing.assert_allclose(batch[row], policy(probs[row:row + 1])[0], atol=1e-7)


@pytest.mark.parametrize("spec", ["identity", "label_only", "top_k:3", "round:2", "noise:0.1",
                                  "reverse_sigmoid:0.7,0.1", "noise:1e-05"])
def test_spec_round_trip(spec):
    policy = parse_policy(spec)
    assert parse_policy(policy.spec).spec == policy.spec
    assert type(parse_policy(policy.spec)) is type(policy)


def test_parse_policy_builds_the_parameters():
    assert parse_policy("top_k:4").k == 4
    assert parse_policy(" round:3 ").decimals == 3
    rs = parse_policy("reverse_sigmoid:0.5,0.25")
    assert (rs.beta, rs.gamma) == (0.5, 0.25)


@pytest.mark.parametrize("spec", ["", "labels", "top_k", "top_k:0", "top_k:two", "round:-1",
                                  "noise:-0.1", "noise:nan", "reverse_sigmoid:0.7",
                                  "reverse_sigmoid:0,0.1", "identity:1", 3])
def test_parse_policy_rejects_bad_specs(spec):
    with pytest.raises(UsageError, match="policy"):
        parse_policy(spec)


@pytest.mark.parametrize("probs", [np.zeros(3), np.full((2, 3), np.nan), [["a", "b"]]])
def test_policies_reject_what_is_no_probability_batch(probs):
    with pytest.raises(UsageError, match="probs"):
        LabelOnly()(probs)
