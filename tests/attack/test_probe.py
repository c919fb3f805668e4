"""attack.probe: choosing the output, telling and checking answer kinds, the journal form and
the input-range decision, on hand-made signatures and answers (numpy only, no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from attack import probe
from common.errors import UsageError
from serving.client import TensorInfo


def outputs(**specs):
    return {k: TensorInfo(k, np.dtype(d), s) for k, (d, s) in specs.items()}


def test_parse_input_range_names_the_argument():
    assert probe.parse_input_range("0, 1") == "0,1"
    assert probe.parse_input_range("auto") == "auto"
    with pytest.raises(UsageError, match=r"`input_range`.*'0,2'.*0,255 \| 0,1 \| -1,1 \| auto"):
        probe.parse_input_range("0,2")


def test_scale_pixels_maps_0_255_to_each_range():
    x = np.array([0, 255], np.uint8).reshape(1, 1, 2, 1)
    assert probe.scale_pixels(x, "0,1").ravel().tolist() == [0.0, 1.0]
    assert probe.scale_pixels(x, "-1,1").ravel().tolist() == [-1.0, 1.0]
    assert probe.scale_pixels(x, "0,255").ravel().tolist() == [0.0, 255.0]


def test_choose_outputs_prefers_full_width_named_outputs_and_states_why():
    sig = outputs(logits=("float32", (None, 10)), probabilities=("float32", (None, 10)),
                  class_ids=("int64", (None,)))
    choice = probe.choose_outputs(sig)
    assert (choice.name, choice.classes, choice.kind) == ("probabilities", None, None)
    assert "probabilities" in choice.reason and "--output" in choice.reason
    only_logits = outputs(logits=("float32", (None, 10)), class_ids=("int64", (None,)))
    assert probe.choose_outputs(only_logits).name == "logits"
    assert probe.choose_outputs(sig, "logits").name == "logits"


def test_choose_outputs_class_ids_and_topk_pairs():
    ids = outputs(class_ids=("int64", (None,)))
    assert probe.choose_outputs(ids).kind == "labels"
    topk = outputs(top_scores=("float32", (None, 3)), top_classes=("int32", (None, 3)))
    choice = probe.choose_outputs(topk)
    assert (choice.name, choice.classes, choice.kind) == ("top_scores", "top_classes", "topk")
    assert probe.choose_outputs(topk, "top_classes").names == ("top_scores", "top_classes")
    # a full probabilities output beats top-k pairs
    both = outputs(probabilities=("float32", (None, 10)), **{k: (t.dtype.name, t.shape)
                                                             for k, t in topk.items()})
    assert probe.choose_outputs(both).name == "probabilities"


def test_choose_outputs_errors_name_output():
    sig = outputs(embedding=("float32", (None, 4, 4)))
    with pytest.raises(UsageError, match=r"`output`.*embedding: float32"):
        probe.choose_outputs(sig)
    with pytest.raises(UsageError, match=r"`output`.*'nope'.*\['embedding'\]"):
        probe.choose_outputs(sig, "nope")


def test_journal_form_one_hot_and_topk_scatter():
    ids = probe.OutputChoice("class_ids", None, "labels", "")
    raw = probe.journal_form({"class_ids": np.array([2, 0, 7])}, ids, "labels", 3)
    assert raw.tolist() == [[0, 0, 1], [1, 0, 0], [0, 0, 0]]  # 7 is out of range: empty row
    with pytest.raises(UsageError, match="output_kind"):
        probe.check_kind(raw, "labels", "class_ids")
    pair = probe.OutputChoice("s", "c", "topk", "")
    raw = probe.journal_form({"s": np.array([[0.7, 0.2]]), "c": np.array([[3, 1]])}, pair,
                             "topk", 4)
    np.testing.assert_allclose(raw, [[0, 0.2, 0, 0.7]])
    np.testing.assert_allclose(probe.to_probabilities(raw, "topk"), [[0, 2 / 9, 0, 7 / 9]],
                               rtol=1e-6)


def test_answer_kind_and_check_kind_name_the_flag():
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 3.0, -2.0]], np.float32)
    probs = probe.to_probabilities(logits, "logits")
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert probe.answer_kind(logits) == "logits"
    assert probe.answer_kind(probs) == "probabilities"
    assert probe.answer_kind(np.eye(3)[[0, 2]]) == "labels"
    with pytest.raises(UsageError, match=r"`output_kind`.*'probabilities'.*--output-kind logits"):
        probe.check_kind(logits, "probabilities", "output_0")
    with pytest.raises(UsageError, match=r"--output-kind probabilities"):
        probe.check_kind(probs, "logits", "scores")
    probe.check_kind(logits, "logits", "output_0")
    probe.check_kind(probs.astype(np.float16), "probabilities", "p")  # float16 rounding passes
    with pytest.raises(UsageError, match="NaN"):
        probe.check_kind(np.array([[np.nan, 1.0]]), "logits", "o")


def test_range_statistics_see_saturated_and_constant_answers():
    rng = np.random.default_rng(0)
    healthy = rng.normal(0, 2, (21, 5))
    saturated = healthy * 255
    constant = np.tile([0.3, 0.1, 0.0, -0.2, 0.05], (21, 1)) + rng.normal(0, 1e-3, (21, 5))
    stats = {"0,255": probe.range_statistics(saturated, "logits"),
             "0,1": probe.range_statistics(healthy, "logits"),
             "-1,1": probe.range_statistics(constant, "logits")}
    assert stats["0,255"]["saturated"] > 0.5 and stats["0,1"]["saturated"] == 0
    assert stats["-1,1"]["top_share"] == 1.0 and stats["-1,1"]["distinct"] == 1
    best, why = probe.decide_range(stats)
    assert best == "0,1" and "degenerate: ['0,255', '-1,1']" in why
    # nothing healthy: the most diverse is taken and the reason says to pass the flag
    best, why = probe.decide_range({"0,255": stats["0,255"], "-1,1": stats["-1,1"]})
    assert best == "0,255" and "--input-range" in why


def test_range_statistics_of_label_only_answers_use_diversity():
    labels = np.eye(4)[[0, 1, 2, 3, 1, 2]]
    s = probe.range_statistics(labels, "labels")
    assert s["saturated"] == 0 and s["distinct"] == 4
    assert s["diversity"] == pytest.approx(-(2 * (1 / 6) * np.log(1 / 6)
                                             + 2 * (1 / 3) * np.log(1 / 3)), abs=1e-3)
