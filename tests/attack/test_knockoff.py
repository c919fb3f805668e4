"""Knockoff Nets end to end through real gRPC against the embedded server: it learns, it resumes
without paying twice, and its command line refuses bad input with one line and exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attack.knockoff import extract, main, prepare_run_dir, run_knockoff
from common.errors import UsageError
from tests.attack.helpers import assert_refused, knockoff_config


def test_knockoff_learns_the_victim(served_victim, data_files, tmp_path):
    config = knockoff_config(served_victim, data_files, tmp_path / "run")
    result = run_knockoff(config)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert result.queries == 400
    evaluation = report["evaluation"]
    assert evaluation["fidelity_test"] > 0.8  # chance: 1/3
    assert evaluation["surrogate_acc"] > 0.8
    assert (tmp_path / "run" / "report.md").is_file()
    assert len(report["curve"]) == 2
    assert any(p.suffix == ".png" for p in (tmp_path / "run").iterdir())
    exported = list((tmp_path / "run" / "surrogate").rglob("saved_model.pb"))
    assert exported, "the surrogate is exported in the victim layout"
    # the run directory layout of every earlier run, plus how the victim was queried
    assert {"config.json", "journal.bin", "strategy.json", "checkpoints", "eval", "surrogate",
            "report.json", "report.md", "curve.json", "victim.json"} <= {
        p.name for p in (tmp_path / "run").iterdir()}
    victim = report["extra"]["victim"]
    assert victim["interface"] == "grpc" and victim["input_range"] == "0,255"
    assert victim["accuracy_measured"] == evaluation["victim_acc"]
    assert "## Victim" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("strategy", ["random", "adaptive"])
def test_interrupted_query_phase_resumes_without_paying_twice(served_victim, data_files,
                                                              tmp_path, strategy):
    from attack.journal import QueryJournal
    from attack.surrogate import SurrogateTrainer
    from common.data import load_dataset
    from serving.client import ServingClient

    config = knockoff_config(served_victim, data_files, tmp_path / "run", budget=300,
                             strategy=strategy)
    transfer = load_dataset(config.transfer_set, "train")
    run_dir = prepare_run_dir(config)

    def online():
        return (SurrogateTrainer("cnn", "none", 16, 3, epochs=1, batch_size=32, seed=0)
                if strategy == "adaptive" else None)

    class Stop(Exception):
        pass

    def interrupt(done, total):
        if done >= 128:
            raise Stop

    with ServingClient(served_victim, "colours", batch_size=32, max_in_flight=2) as client:
        with pytest.raises(Stop):
            extract(client, transfer, config, run_dir, surrogate=online(),
                    on_progress=interrupt)
        first = client.queries
    with QueryJournal.open(run_dir) as journal:
        answered_before = journal.answered_indices().copy()
    assert len(answered_before) == first >= 128

    resumed = dataclass_replace(config, resume=True)
    prepare_run_dir(resumed)
    with ServingClient(served_victim, "colours", batch_size=32, max_in_flight=2) as client:
        stats = extract(client, transfer, resumed, run_dir, surrogate=online())
        second = client.queries
    assert first + second == 300  # the budget, exactly: nothing sent twice, nothing lost
    assert stats["answered"] == 300
    with QueryJournal.open(run_dir) as journal:
        indices = journal.answered_indices()
    assert len(np.unique(indices)) == 300
    assert np.array_equal(indices[:len(answered_before)], answered_before)


def dataclass_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_resume_refuses_another_config(served_victim, data_files, tmp_path):
    config = knockoff_config(served_victim, data_files, tmp_path / "run")
    prepare_run_dir(config)
    with pytest.raises(UsageError, match=r"`--resume`.*--budget 400 \(now --budget 500\)"):
        prepare_run_dir(dataclass_replace(config, budget=500, resume=True))
    with pytest.raises(UsageError, match="`out`.*pass --resume"):
        prepare_run_dir(config)


def test_cli_unreachable_host_and_unknown_model(capsys, served_victim, data_files, tmp_path):
    transfer, _ = data_files
    base = ["--transfer-set", str(transfer), "--budget", "10", "--backbone", "cnn",
            "--weights", "none", "--heldout", "0", "--timeout", "2"]
    assert main([*base, "--grpc", "127.0.0.1:1", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "UNAVAILABLE" in err[0], err
    assert main([*base, "--grpc", served_victim, "--model", "nope",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NOT_FOUND" in err[0], err


def test_cli_refuses_topk_above_the_victims_classes_before_any_query(capsys, served_victim,
                                                                     data_files, tmp_path):
    transfer, _ = data_files
    code = main(["--transfer-set", str(transfer), "--grpc", served_victim, "--model", "colours",
                 "--granularity", "topk:5", "--budget", "100", "--heldout", "100",
                 "--backbone", "cnn", "--weights", "none",
                 "--out", str(tmp_path / "r")])
    # refused before the run directory and any query
    assert_refused(capsys, code, "granularity", "at most 3", unwritten=tmp_path / "r")


def test_adaptive_strategy_end_to_end(served_victim, data_files, tmp_path):
    config = knockoff_config(served_victim, data_files, tmp_path / "run", strategy="adaptive",
                             budget=256, curve_points=1)
    run_knockoff(config)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["evaluation"]["fidelity_test"] > 0.6
    steps = [json.loads(line) for line in (tmp_path / "run" / "policy.jsonl").open()]
    assert steps and steps[-1]["answered"] == 256
    assert all(np.isfinite(v) for s in steps for v in _numbers(s))


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


def test_bad_arch_args_refused_before_the_run_directory(served_victim, data_files, tmp_path):
    config = knockoff_config(served_victim, data_files, tmp_path / "run", arch_args=("nope=1",))
    with pytest.raises(UsageError, match="backbone `cnn`.*nope"):
        run_knockoff(config)
    assert not (tmp_path / "run").exists()
