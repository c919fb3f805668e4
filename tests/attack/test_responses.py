"""Tests of response granularity: flag parsing, truncation to training targets, detection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from attack.responses import (
    Granularity,
    apply_granularity,
    detect_granularity,
    parse_granularity,
)
from common.errors import UsageError


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


PROBS = softmax(np.random.default_rng(0).normal(size=(32, 10)) * 3)


# -- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("probs", Granularity("probs")),
        ("top1", Granularity("top1", 1)),
        ("topk:5", Granularity("topk", 5)),
        ("topk:1", Granularity("topk", 1)),
        (" TopK:12 ", Granularity("topk", 12)),
    ],
)
def test_parse(text, expected):
    parsed = parse_granularity(text)
    assert parsed == expected
    assert parse_granularity(str(parsed)) == parsed  # str() is the flag text again


@pytest.mark.parametrize(
    "text", ["topk:0", "topk:x", "top2", "topk", "topk:", "topk:-1", "topk:1.5", "", "prob"]
)
def test_parse_errors_name_the_argument(text):
    with pytest.raises(UsageError, match=r"`granularity`.*Received: granularity=.*Expected probs,"):
        parse_granularity(text)


def test_parse_refuses_non_text():
    with pytest.raises(UsageError, match="`granularity`"):
        parse_granularity(3)


def test_str_round_trip():
    assert [str(g) for g in (Granularity("probs"), Granularity("top1"), Granularity("topk", 3))] \
        == ["probs", "top1", "topk:3"]


@pytest.mark.parametrize(
    ("kind", "k", "match"),
    [("topk", None, "`k`"), ("topk", 0, "`k`"), ("top1", 2, "`k`"), ("probs", 3, "`k`"),
     ("top5", None, "`kind`")],
)
def test_granularity_validates_itself(kind, k, match):
    with pytest.raises(UsageError, match=match):
        Granularity(kind, k)


# -- applying ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["probs", "top1", "topk:1", "topk:3", "topk:10", "topk:50"])
def test_rows_sum_to_one_and_shape_and_dtype_hold(text):
    targets = apply_granularity(PROBS, parse_granularity(text))
    assert targets.shape == PROBS.shape and targets.dtype == np.float32
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert (targets >= 0).all()
    # the arg-max never changes, whatever the granularity
    np.testing.assert_array_equal(targets.argmax(axis=1), PROBS.argmax(axis=1))


def test_probs_are_unchanged_and_k_at_least_k_means_probs():
    for text in ("probs", "topk:10", "topk:11"):
        np.testing.assert_allclose(apply_granularity(PROBS, parse_granularity(text)), PROBS,
                                   rtol=1e-6)


def test_top1_is_one_hot_at_the_argmax():
    targets = apply_granularity(PROBS, parse_granularity("top1"))
    expected = np.eye(10, dtype=np.float32)[PROBS.argmax(axis=1)]
    np.testing.assert_array_equal(targets, expected)
    np.testing.assert_array_equal(apply_granularity(PROBS, Granularity("topk", 1)), expected)


def test_topk_keeps_the_k_largest_renormalised():
    probs = np.array([[0.1, 0.4, 0.2, 0.3], [0.7, 0.05, 0.05, 0.2]], dtype=np.float32)
    targets = apply_granularity(probs, Granularity("topk", 2))
    np.testing.assert_allclose(targets, [[0, 4 / 7, 0, 3 / 7], [0.7 / 0.9, 0, 0, 0.2 / 0.9]],
                               rtol=1e-6)


def test_ties_go_to_the_lower_class_index():
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [0.1, 0.3, 0.3, 0.3]], dtype=np.float32)
    np.testing.assert_array_equal(
        apply_granularity(probs, Granularity("top1")), [[1, 0, 0, 0], [0, 1, 0, 0]]
    )
    np.testing.assert_allclose(
        apply_granularity(probs, Granularity("topk", 2)), [[0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0]]
    )
    shuffled = apply_granularity(probs[::-1].copy(), Granularity("topk", 2))[::-1]
    np.testing.assert_allclose(shuffled, apply_granularity(probs, Granularity("topk", 2)))


def test_rows_that_do_not_sum_to_one_are_renormalised():
    received = np.array([[0.5, 0.3, 0.0], [0.0, 0.2, 0.2]], dtype=np.float32)  # rounded / cut
    np.testing.assert_allclose(
        apply_granularity(received, Granularity("probs")), [[0.625, 0.375, 0], [0, 0.5, 0.5]]
    )


def test_empty_batch():
    targets = apply_granularity(np.zeros((0, 4), np.float32), Granularity("topk", 2))
    assert targets.shape == (0, 4) and targets.dtype == np.float32


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (np.array([[0.5, -0.1, 0.6]]), r"`probs`.*minimum -0.1.*did the model return logits"),
        (np.array([[0.5, np.nan, 0.5]]), r"`probs`.*NaN"),
        (np.array([[0.5, 0.5], [0.0, 0.0]]), r"`probs`.*1 all-zero row\(s\) \(first: row 1\)"),
        (np.array([0.5, 0.5]), r"`probs`.*shape \(2,\)"),
        (np.zeros((2, 0)), r"`probs`.*shape \(2, 0\)"),
        (np.array([["a", "b"]]), r"`probs`.*dtype <U1"),
    ],
)
def test_apply_refuses_what_is_not_probabilities(probs, match):
    with pytest.raises(UsageError, match=match):
        apply_granularity(probs, Granularity("probs"))


def test_apply_wants_a_granularity_object():
    with pytest.raises(UsageError, match="`granularity`.*parse_granularity"):
        apply_granularity(PROBS, "top1")


@settings(max_examples=80, deadline=None, derandomize=True)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
               elements=st.floats(0, 1, width=32)),
    st.integers(1, 14),
)
def test_topk_properties(probs, k):
    probs[:, 0] += 1e-3  # no all-zero rows
    targets = apply_granularity(probs, Granularity("topk", k))
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-5)
    assert (np.count_nonzero(targets, axis=1) <= k).all()
    assert ((targets > 0) <= (probs > 0)).all()  # nothing appears that was not received
    # every kept class is at least as probable as every dropped one
    for row, target in zip(probs, targets):
        kept, dropped = row[target > 0], row[target == 0]
        if kept.size and dropped.size:
            assert kept.min() >= dropped.max()


# -- detecting -----------------------------------------------------------------------------


def test_detect_full_rows_are_probs():
    assert detect_granularity(PROBS) == "probs"


def test_detect_one_hot_is_top1():
    assert detect_granularity(np.eye(10, dtype=np.float32)[[3, 1, 4, 1, 5]]) == "top1"
    label_with_confidence = np.zeros((3, 10), np.float32)
    label_with_confidence[[0, 1, 2], [2, 7, 1]] = [0.9, 0.6, 0.4]
    assert detect_granularity(label_with_confidence) == "top1"


@pytest.mark.parametrize("k", [2, 3, 9])
def test_detect_top_k_rows(k):
    kept = np.argsort(-PROBS, axis=1)[:, :k]
    truncated = np.zeros_like(PROBS)
    rows = np.arange(len(PROBS))[:, None]
    truncated[rows, kept] = PROBS[rows, kept]  # a gateway's top-k policy, not renormalised
    assert detect_granularity(truncated) == f"topk:{k}"
    assert detect_granularity(apply_granularity(PROBS, Granularity("topk", k))) == f"topk:{k}"
    assert parse_granularity(detect_granularity(truncated)) == Granularity("topk", k)


def test_detect_softmax_underflow_is_still_probs():
    # A confident float32 softmax underflows to exact zeros, a different number in each row.
    logits = np.random.default_rng(1).normal(size=(40, 10)) * 100
    probs = softmax(logits)
    nonzero = np.count_nonzero(probs, axis=1)
    assert nonzero.max() < 10 and len(set(nonzero.tolist())) > 2
    assert detect_granularity(probs) == "probs"


def test_detect_refuses_empty_and_invalid():
    with pytest.raises(UsageError, match="`responses`.*empty batch"):
        detect_granularity(np.zeros((0, 5), np.float32))
    with pytest.raises(UsageError, match="`responses`.*minimum"):
        detect_granularity(np.array([[1.0, -2.0]]))
