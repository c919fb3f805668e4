"""`python -m benchmarks.output_policies`: policy lists, the benign cost, arguments, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import output_policies as op
from common.errors import UsageError


def test_split_policies_keeps_reverse_sigmoid_pairs_together():
    assert op.split_policies("identity, label_only,top_k:1,round:1,noise:0.2,"
                             "reverse_sigmoid:0.7,0.4") == (
        "identity", "label_only", "top_k:1", "round:1", "noise:0.2", "reverse_sigmoid:0.7,0.4")
    assert op.split_policies(op.DEFAULT_POLICIES)[-1].startswith("reverse_sigmoid:")


@pytest.mark.parametrize("text", ["", "identity,bogus", "round:-1", "identity,identity",
                                  "reverse_sigmoid:0.7"])
def test_split_policies_rejects_bad_lists(text):
    with pytest.raises(UsageError, match="`policies`"):
        op.split_policies(text)


def test_policy_slug_is_a_plain_folder_name():
    assert op.policy_slug("reverse_sigmoid:0.7,0.4") == "reverse_sigmoid_0.7_0.4"
    assert op.policy_slug("top_k:1") == "top_k_1"
    assert op.policy_slug("identity") == "identity"


def test_benign_cost_on_hand_made_answers():
    truth = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    labels = np.array([0, 1, 0, 1])  # undefended: right, right, wrong, wrong -> 0.5
    same = op.benign_cost(truth, truth, labels)
    assert same["accuracy_undefended"] == same["accuracy"] == 0.5
    assert same["accuracy_change"] == 0 and same["mean_l1"] == 0 and same["argmax_kept"] == 1
    one_hot = np.eye(3)[truth.argmax(1)]
    labels_only = op.benign_cost(truth, one_hot, labels)
    assert labels_only["accuracy_change"] == 0 and labels_only["argmax_kept"] == 1
    # L1 per row: 2 * (1 - max)  -> 0.6, 0.8, 1.2, 1.0
    assert labels_only["mean_l1"] == pytest.approx((0.6 + 0.8 + 1.2 + 1.0) / 4)
    flipped = truth[:, [1, 0, 2]]  # swaps classes 0 and 1 in every answer
    cost = op.benign_cost(truth, flipped, labels)
    assert cost["argmax_kept"] == 0.25  # only the row whose top class is 2
    assert cost["accuracy"] == 0.25 and cost["accuracy_change"] == pytest.approx(-0.25)
    with pytest.raises(UsageError, match="`answered`"):
        op.benign_cost(truth, truth[:2], labels)


@pytest.mark.parametrize("extra, argument", [  # the flag typed (issue 17)
    (["--policies", "identity,nope"], "`--policies`"),
    (["--policies", ""], "`--policies`"),
    (["--budget", "-3"], "`--budget`"),
    (["--test-limit", "0"], "`--test-limit`"),
    (["--model", "nope"], "`--model`"),
    (["--data-dir", "/no/such/data"], "`--data-dir`"),
])
def test_bad_arguments_exit_2_with_one_line_and_create_nothing(layout, extra, argument,
                                                               one_line_error):
    one_line_error(op.main, ["--victims", str(layout / "victims"), "--data-dir",
                             str(layout / "data"), *extra], argument)


@pytest.mark.slow
def test_end_to_end_identity_costs_nothing_label_only_leaks_only_labels(tiny_world, tmp_path,
                                                                         capsys):
    base, _ = tiny_world
    out = tmp_path / "policies"
    argv = ["--victims", str(base / "victims"), "--model", "colours",
            "--benign-set", str(base / "benign.npz"), "--transfer-set",
            str(base / "transfer.npz"), "--data-dir", str(base), "--weights", "none",
            "--backbone", "cnn", "--arch-args", "--input-size", "16", "--epochs", "6",
            "--batch-size", "32", "--query-batch", "16", "--budget", "160", "--noise", "100",
            "--policies", "identity,label_only,round:1", "--out", str(out)]
    assert op.main(argv) == 0
    assert "| label_only |" in capsys.readouterr().out
    rows = {r["policy"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    identity, labels, rounded = rows["identity"], rows["label_only"], rows["round:1"]
    assert identity["accuracy_change"] == 0 and identity["mean_l1"] < 1e-5
    assert identity["argmax_kept"] == 1.0 and identity["label_only_answers"] == 0
    assert labels["argmax_kept"] == 1.0 and labels["accuracy_change"] == 0
    assert labels["mean_l1"] > 0.05 and labels["label_only_share"] == 1.0
    assert 0 < rounded["mean_l1"] < labels["mean_l1"]
    for row in rows.values():
        assert row["n_test"] == 400 and row["n_queries"] == 160
        assert row["fidelity_test"] > 0.6  # chance is 1/3
    before = (out / "label_only" / "knockoff" / "report.json").stat().st_mtime_ns
    assert op.main(argv) == 0  # resumed: everything reused
    assert (out / "label_only" / "knockoff" / "report.json").stat().st_mtime_ns == before
