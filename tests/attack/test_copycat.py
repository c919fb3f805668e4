"""Copycat CNN (da Silva et al. 2018) end to end through real gRPC: it learns from top-1 labels
of out-of-domain images, its second phase uses the problem-domain images, it trains on one-hot
targets whatever the victim returns, it resumes without paying twice, and bad input exits 2."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from attack.config import CopycatConfig
from attack.copycat import main, one_hot_top1, run_copycat
from tests.attack.helpers import assert_refused, tiny_config


def make_config(target, data_files, out, **overrides) -> CopycatConfig:
    transfer, test = data_files
    return tiny_config(CopycatConfig, target, out, **{
        "transfer_set": str(transfer), "budget": 300, "heldout": 100, "pd_set": str(test),
        "pd_split": "test", "pd_budget": 60, "pd_epochs": 3, "epochs": 6, "batch_size": 32,
        "query_batch": 32, "in_flight": 2, "test_set": str(test), "noise": 100,
        "curve_points": 2, **overrides})


def test_targets_are_one_hot_top1_whatever_the_victim_returns():
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]], np.float32)
    top2 = np.array([[0.0, 0.6, 0.4], [0.7, 0.3, 0.0]], np.float32)
    label = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    for answers in (probs, top2, label):
        assert np.array_equal(one_hot_top1(answers), label)


def test_copycat_learns_the_victim_in_two_phases(served_victim, data_files, tmp_path):
    from attack.journal import QueryJournal

    config = make_config(served_victim, data_files, tmp_path / "run")
    result = run_copycat(config)
    assert result.queries == 360
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["extra"]["phases"] == {"non_problem_domain": 300, "problem_domain": 60}
    assert report["extra"]["received_granularity"] == "probs"  # the victim sent probabilities
    assert report["evaluation"]["fidelity_test"] > 0.8  # chance: 1/3
    assert [p["queries"] for p in report["curve"]] == [150, 300, 360]
    with QueryJournal.open(tmp_path / "run") as journal:
        indices = journal.answered_indices()
    assert len(np.unique(indices)) == 360
    assert (indices[:300] < 500).all() and (indices[300:] >= 500).all()  # phase 1, then 2


def test_interrupted_second_phase_resumes_without_paying_twice(served_victim, data_files,
                                                               tmp_path, monkeypatch):
    from attack.journal import QueryJournal

    sent: list[int] = []
    original = QueryJournal.record_sent

    def counting(self, indices):
        original(self, indices)
        sent.extend(np.asarray(indices).tolist())

    monkeypatch.setattr(QueryJournal, "record_sent", counting)
    config = make_config(served_victim, data_files, tmp_path / "run", in_flight=1,
                         query_batch=8, curve_points=1, epochs=2)

    class Stop(Exception):
        pass

    def interrupt(done, total):
        if done >= 320:  # in phase 2 (queries 300..359)
            raise Stop

    with pytest.raises(Stop):
        run_copycat(config, on_progress=interrupt)
    first = list(sent)
    with QueryJournal.open(tmp_path / "run") as journal:
        answered = set(journal.answered_indices().tolist())
        in_flight = set(journal.pending().tolist())
    assert 320 <= len(answered) < 360

    run_copycat(dataclasses.replace(config, resume=True))
    second = sent[len(first):]
    assert not answered & set(second)  # no answered query sent again
    assert set(second) & set(first) <= in_flight  # only those in flight at the stop, if any
    assert len(set(sent)) == 360
    with QueryJournal.open(tmp_path / "run") as journal:
        assert journal.num_answered == 360 and not len(journal.pending())


def test_pd_budget_larger_than_the_pd_set_is_refused(capsys, served_victim, data_files,
                                                     tmp_path):
    transfer, test = data_files
    code = main(["--transfer-set", str(transfer), "--grpc", served_victim, "--model", "colours",
                 "--pd-set", str(test), "--pd-split", "test", "--pd-budget", "5000",
                 "--budget", "10", "--heldout", "100", "--backbone", "cnn",
                 "--weights", "none", "--out", str(tmp_path / "r")])
    assert_refused(capsys, code, "`--pd-budget`", "300", unwritten=tmp_path / "r")
